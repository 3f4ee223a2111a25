"""One check of config arguments against a callable's signature.

Used alike for ``optimizer.args`` (the optimizer's constructor),
``model.args`` (the model builder) and ``callbacks.gsnr_monitor``
(:class:`~tf_largebatch.callbacks.GSNRMonitor`): every key must be a named
parameter, and a value must be a boolean where the default is one and a
number where the default is a number. The callable's own checks (ranges,
combinations) still run when it is called.
"""

import inspect
import numbers

from tf_largebatch.config.errors import ConfigError, describe


def parameters_of(target):
    """Named parameters of ``target``: ``{name: inspect.Parameter}``.

    For a class, the parameters of its ``__init__``, then those with a default
    of every ``__init__`` along its MRO (the first definition of a name wins),
    so the base keyword arguments of a Keras optimizer count while a base
    class's required plumbing (an inner optimizer) does not. ``*args``/``**kwargs``
    and ``self`` are not parameters.
    """
    if not isinstance(target, type):
        return _named_parameters([(target, True)])
    return _named_parameters([(klass.__dict__["__init__"], klass is target) for klass in target.__mro__
                              if "__init__" in klass.__dict__])


def _named_parameters(functions):
    """``{name: Parameter}`` of ``(function, own)`` pairs, first definition
    first; from a function that is not ``own``, only parameters with a default."""
    parameters = {}
    for function, own in functions:
        for param in inspect.signature(function).parameters.values():
            if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL) or param.name == "self":
                continue
            if own or param.default is not param.empty:
                parameters.setdefault(param.name, param)
    return parameters


def check_arguments(args, target, path, owner, *, set_elsewhere=None, also_accepted=()):
    """Checks a mapping of keyword arguments against ``target``'s signature.

    Args:
        args: the mapping from the config.
        target: the callable or class the arguments are for.
        path: the key path of ``args`` (``optimizer.args``); each error names
            ``path.<key>``.
        owner: how errors name ``target`` (``SNGM``, ``model 'resnet20'``).
        set_elsewhere: ``{argument: where}`` for arguments the runner supplies
            from another key; giving one is an error that says where it goes.
        also_accepted: names accepted beyond the signature (handled by the caller).

    Raises:
        ConfigError: for an unknown argument (listing the known ones), one the
            runner supplies, or a value of the wrong kind.
    """
    set_elsewhere = dict(set_elsewhere or {})
    parameters = parameters_of(target)
    for key, value in args.items():
        key_path = f"{path}.{key}"
        if key in set_elsewhere:
            raise ConfigError(key_path, f"set by the runner; put it in {set_elsewhere[key]}")
        if key in also_accepted:
            continue
        if key not in parameters:
            known = sorted({*parameters, *also_accepted} - {*set_elsewhere, "name"})
            raise ConfigError(key_path, f"unknown argument of {owner}; expected one of: {', '.join(known)}")
        default = parameters[key].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(key_path, f"expected true or false, got {describe(value)}")
        elif isinstance(default, numbers.Real):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ConfigError(key_path, f"expected a number, got {describe(value)}")
