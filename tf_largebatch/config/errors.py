"""The one error type of the config layer, and how values are quoted in it."""


class ConfigError(ValueError):
    """A configuration problem, with the key path (or flag) it concerns.

    Args:
        path: the key path (``optimizer.args.momentum``, ``phases[1].name``) or
            the command-line flag (``--config``) the problem is about; empty for
            a problem of the whole file.
        message: what is wrong and what was expected.
    """

    def __init__(self, path, message):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


def describe(value):
    """``value`` as an error message quotes it: strings in quotes, others with their type."""
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"
