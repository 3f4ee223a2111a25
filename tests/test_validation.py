"""Bad hyperparameters fail at construction with a ValueError naming the argument and the value.

Parametrized over every optimizer of the zoo and every argument it takes: a
new optimizer (or a new argument of an old one) is checked without a new test.
"""

import pytest

from optimizer_zoo import ZOO

# (argument, bad value, text the message must contain besides the argument name)
BAD_VALUES = [
    ("learning_rate", -0.1, "-0.1"),
    ("learning_rate", float("nan"), "nan"),
    ("momentum", -0.1, "-0.1"),
    ("momentum", 1.0, "1.0"),
    ("momentum", 1.5, "1.5"),
    ("beta_1", 1.0, "1.0"),
    ("beta_2", -0.5, "-0.5"),
    ("gsnr_momentum", 1.0, "1.0"),
    ("gamma", 0.0, "0.0"),
    ("gamma", -1.0, "-1.0"),
    ("weight_decay", -1e-3, "-0.001"),
    ("epsilon", -1e-8, "-1e-08"),
    ("trust_coefficient", -1.0, "-1.0"),
    ("trust_ratio_bounds", (2.0, 1.0), "(2.0, 1.0)"),
    ("trust_ratio_bounds", (0.0, 1.0), "0.0"),
    ("trust_ratio_bounds", (-1.0, 1.0), "-1.0"),
    ("trust_ratio_bounds", 5.0, "5.0"),
    ("exclude_from_weight_decay", "bias", "'bias'"),
    ("exclude_from_weight_decay", ["bias", 3], "3"),
    ("exclude_from_weight_decay", ["[unclosed"], "'[unclosed'"),
    ("exclude_from_layer_adaptation", "LayerNorm", "'LayerNorm'"),
    ("exclude_from_layer_adaptation", ["(unbalanced"], "'(unbalanced'"),
    ("gradient_accumulation_steps", 0, "0"),
    ("gradient_accumulation_steps", 1, "1"),
    ("gradient_accumulation_steps", -2, "-2"),
    ("gradient_accumulation_steps", 2.5, "2.5"),
    ("trust_ratio_on", "weights", "'weights'"),
    ("nonfinite_gradients", "ignore", "'ignore'"),
]


@pytest.mark.parametrize("entry", ZOO)
def test_bad_hyperparameters_raise_value_error_naming_them(entry):
    """Every bad value of every argument the optimizer takes (one test per optimizer:
    the cases are cheap, a pytest test each is not)."""
    problems = []
    checked = 0
    for argument, value, fragment in BAD_VALUES:
        if not entry.accepts(argument):
            continue
        checked += 1
        try:
            entry.make(**{argument: value})
        except ValueError as error:
            message = str(error)
            if argument not in message or fragment not in message:
                problems.append(f"{argument}={value!r}: message does not name it: {message!r}")
        except Exception as error:  # noqa: BLE001 - reported below
            problems.append(f"{argument}={value!r}: {type(error).__name__} instead of ValueError: {error}")
        else:
            problems.append(f"{argument}={value!r}: accepted")
    assert checked >= 5
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("entry", ZOO)
def test_good_hyperparameters_are_accepted(entry):
    """The zoo's own settings, and the edge values that are legal, construct fine."""
    entry.make()
    entry.make(gradient_accumulation_steps=2)
    if entry.accepts("momentum"):
        entry.make(momentum=0.0)
    if entry.accepts("trust_ratio_bounds"):
        entry.make(trust_ratio_bounds=(0.5, 0.5))
    if entry.accepts("exclude_from_weight_decay"):
        entry.make(exclude_from_weight_decay=("bias", r"layer_norm.*/gamma"))
    if entry.accepts("learning_rate"):
        entry.make(learning_rate=0.0)
