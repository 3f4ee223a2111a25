"""Argument checks shared by every public constructor.

Each check raises ``ValueError`` naming the argument and the value it got, so a
bad hyperparameter fails at construction time rather than as a NaN at step 10k.
"""

import math
import numbers

import numpy as np


def _describe(name, value, expected):
    return f"`{name}` must be {expected}. Received: {name}={value!r}"


def check_number(name, value, *, low=None, high=None, low_inclusive=True,
                 high_inclusive=True, allow_none=False):
    """Checks that ``value`` is a finite real number within the given bounds."""
    if value is None and allow_none:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(_describe(name, value, "a real number"))
    if not math.isfinite(float(value)):
        raise ValueError(_describe(name, value, "finite"))
    if low is not None:
        ok = value >= low if low_inclusive else value > low
        if not ok:
            op = ">=" if low_inclusive else ">"
            raise ValueError(_describe(name, value, f"{op} {low}"))
    if high is not None:
        ok = value <= high if high_inclusive else value < high
        if not ok:
            op = "<=" if high_inclusive else "<"
            raise ValueError(_describe(name, value, f"{op} {high}"))
    return value


def check_probability(name, value, *, allow_one=False):
    """Checks a decay rate such as a momentum coefficient: in [0, 1) (or [0, 1])."""
    return check_number(name, value, low=0.0, high=1.0, high_inclusive=allow_one)


def check_bool(name, value):
    """Checks a switch is a real boolean (``"no"`` would otherwise count as true)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(_describe(name, value, "True or False"))
    return bool(value)


def check_positive_int(name, value, *, minimum=1, allow_none=False):
    if value is None and allow_none:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(_describe(name, value, f"an integer >= {minimum}"))
    return int(value)


def check_learning_rate(value):
    """A float >= 0, a Keras ``LearningRateSchedule``, or a callable."""
    if callable(value) or hasattr(value, "get_config"):
        return value
    return check_number("learning_rate", value, low=0.0)


def check_bounds(name, bounds):
    """Checks ``(low, high)`` with ``0 < low <= high``; ``None`` means no bounds."""
    if bounds is None:
        return None
    try:
        low, high = bounds
    except (TypeError, ValueError):
        raise ValueError(_describe(name, bounds, "None or a pair (low, high)")) from None
    check_number(f"{name}[0]", low, low=0.0, low_inclusive=False)
    check_number(f"{name}[1]", high, low=0.0, low_inclusive=False)
    if low > high:
        raise ValueError(_describe(name, bounds, "a pair with low <= high"))
    return (float(low), float(high))


def check_patterns(name, patterns):
    """Checks a list of regular-expression strings; ``None`` means an empty list."""
    import re

    if patterns is None:
        return []
    if isinstance(patterns, str):
        raise ValueError(_describe(name, patterns, "a list of strings, not a single string"))
    try:
        patterns = list(patterns)
    except TypeError:
        raise ValueError(_describe(name, patterns, "None or a list of strings")) from None
    result = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ValueError(_describe(name, patterns, "a list of strings"))
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"`{name}` contains an invalid regular expression {pattern!r}: {err}") from None
        result.append(pattern)
    return result


#: Keras base-optimizer keywords checked by :func:`check_base_keywords`.
BASE_KEYWORDS = ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "use_ema", "ema_momentum",
                 "ema_overwrite_frequency", "loss_scale_factor", "gradient_accumulation_steps")


def check_base_keywords(kwargs):
    """Checks the Keras base-optimizer keywords in ``kwargs``; returns ``kwargs``.

    One check for every optimizer of the package (and, through the VR
    optimizers, for the Keras optimizer they wrap). Keras itself accepts
    values that silently change the math: a negative ``loss_scale_factor``
    turns descent into ascent, ``clipnorm=-1`` or NaN turns clipping off,
    ``use_ema="yes"`` turns the average on, and strings fail only at the first
    step. Absent keys and ``None`` (where Keras allows it) are accepted.

    Args:
        kwargs: a mapping of keyword arguments; keys other than
            :data:`BASE_KEYWORDS` are ignored.

    Raises:
        ValueError: naming the argument and the value, for
            ``weight_decay`` (finite, >= 0), ``clipnorm``/``clipvalue``/
            ``global_clipnorm`` (finite, > 0), ``loss_scale_factor`` (finite,
            > 0), ``use_ema`` (a bool), ``ema_momentum`` (in [0, 1)),
            ``ema_overwrite_frequency`` (an int >= 1) and
            ``gradient_accumulation_steps`` (an int >= 2: Keras reads 0 and 1
            as no accumulation and accepts 2.5).
    """
    check_number("weight_decay", kwargs.get("weight_decay"), low=0.0, allow_none=True)
    for name in ("clipnorm", "clipvalue", "global_clipnorm", "loss_scale_factor"):
        check_number(name, kwargs.get(name), low=0.0, low_inclusive=False, allow_none=True)
    if "use_ema" in kwargs:
        check_bool("use_ema", kwargs["use_ema"])
    if "ema_momentum" in kwargs:
        check_probability("ema_momentum", kwargs["ema_momentum"])
    check_positive_int("ema_overwrite_frequency", kwargs.get("ema_overwrite_frequency"), allow_none=True)
    check_positive_int("gradient_accumulation_steps", kwargs.get("gradient_accumulation_steps"), minimum=2,
                       allow_none=True)
    return kwargs
