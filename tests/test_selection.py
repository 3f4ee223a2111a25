"""The one variable-selection rule (``tf_largebatch.optimizers.selection``), on its own and in every optimizer."""

import keras
import numpy as np
import pytest

import reference_optimizers as ref
from tf_largebatch.optimizers import (
    LAMB,
    LARS,
    MCLR,
    SNGM,
    LayerwiseAdagrad,
    LayerwiseAdam,
    LayerwiseRMSprop,
    LayerwiseSGD,
    PercentDelta,
)
from tf_largebatch.optimizers.selection import VariableSelection, check_patterns

PATHS = [
    "encoder/dense/kernel",
    "encoder/dense/bias",
    "encoder/layer_normalization/gamma",
    "encoder/layer_normalization/beta",
    "head/kernel",
]
LAYERWISE = [LARS, LAMB, LayerwiseSGD, LayerwiseAdagrad, LayerwiseRMSprop, LayerwiseAdam, MCLR, PercentDelta]


@pytest.fixture(scope="module")
def variables():
    return ref.make_variables([np.ones((2, 2)), np.ones(2), np.ones(2), np.ones(2), np.ones((2, 1))], PATHS)


# --------------------------------------------------------------- the rule
@pytest.mark.parametrize(
    "decay_list, adaptation_list, decays, adapts",
    [
        (None, None, [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]),
        ([], None, [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]),
        # None: the weight-decay list.
        (["bias", "layer_normalization"], None, [1, 0, 0, 0, 1], [1, 0, 0, 0, 1]),
        # []: adapt every variable.
        (["bias", "layer_normalization"], [], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]),
        (["bias"], ["layer_normalization/(gamma|beta)"], [1, 0, 1, 1, 1], [1, 1, 0, 0, 1]),
        # Searched in the full path: a layer name matches, anchors work.
        (["^encoder/"], ["kernel$"], [0, 0, 0, 0, 1], [0, 1, 1, 1, 0]),
    ],
)
def test_patterns_resolve_to_per_variable_decisions(variables, decay_list, adaptation_list, decays, adapts):
    selection = VariableSelection(decay_list, adaptation_list)
    got_decays, got_adapts = selection.resolve(variables)
    assert got_decays == [bool(d) for d in decays]
    assert got_adapts == [bool(a) for a in adapts]


def test_keras_short_name_exclusions_still_apply(variables):
    """Keras's own ``exclude_from_weight_decay`` API is honoured through ``also_decays``."""
    selection = VariableSelection(["bias"])
    decays, _ = selection.resolve(variables, also_decays=lambda v: v.name != "gamma")
    assert decays == [True, False, False, True, True]


@pytest.mark.parametrize(
    "value, shown",
    [(5, "5"), (1.5, "1.5"), (True, "True"), ("bias", "'bias'"), (["bias", 3], "3"), (["[unclosed"], "'[unclosed'"),
     ({"bias": 1}, "{'bias': 1}"), (b"bias", "b'bias'")],
)
@pytest.mark.parametrize("argument", ["exclude_from_weight_decay", "exclude_from_layer_adaptation"])
def test_bad_lists_are_clear_errors(argument, value, shown):
    with pytest.raises(ValueError) as error:
        check_patterns(argument, value)
    assert argument in str(error.value) and shown in str(error.value)


def test_tuples_and_generators_are_lists():
    assert check_patterns("x", ("a", "b")) == ["a", "b"]
    assert check_patterns("x", (p for p in ["a"])) == ["a"]
    assert check_patterns("x", None) == []


# ---------------------------------------------- every optimizer, one meaning
NUMBER_CASES = [(cls, argument) for cls in LAYERWISE + [SNGM]
                for argument in ("exclude_from_weight_decay", "exclude_from_layer_adaptation")
                if not (cls is SNGM and argument == "exclude_from_layer_adaptation")]


@pytest.mark.parametrize("cls, argument", NUMBER_CASES, ids=lambda v: getattr(v, "__name__", v))
def test_an_exclusion_list_given_as_a_number_names_argument_and_value(cls, argument):
    with pytest.raises(ValueError) as error:
        cls(**{argument: 5})
    assert argument in str(error.value) and "5" in str(error.value)


@pytest.mark.parametrize("cls", LAYERWISE, ids=lambda c: c.__name__)
def test_every_layerwise_optimizer_resolves_none_and_empty_alike(cls, variables):
    same = cls(weight_decay=0.01, exclude_from_weight_decay=["bias", "layer_normalization"])
    every = cls(weight_decay=0.01, exclude_from_weight_decay=["bias", "layer_normalization"],
                exclude_from_layer_adaptation=[])
    for optimizer, adapts in [(same, [1, 0, 0, 0, 1]), (every, [1, 1, 1, 1, 1])]:
        optimizer.build(variables)
        assert optimizer._adapts == [bool(a) for a in adapts]
        assert optimizer._decays == [True, False, False, False, True]
        assert [optimizer._use_weight_decay(v) for v in variables] == optimizer._decays
    assert same.get_config()["exclude_from_layer_adaptation"] == ["bias", "layer_normalization"]
    assert every.get_config()["exclude_from_layer_adaptation"] == []
    assert cls.from_config(every.get_config()).get_config() == every.get_config()


def test_sngm_weight_decay_uses_the_same_selection(variables):
    optimizer = SNGM(weight_decay=0.1, exclude_from_weight_decay=["layer_normalization"])
    optimizer.build(variables)
    assert optimizer._decays == [True, True, False, False, True]


def test_keras_exclusion_api_before_build_is_resolved_at_build(variables):
    optimizer = LARS(weight_decay=0.01, exclude_from_weight_decay=["bias"])
    optimizer.exclude_from_weight_decay(var_names=["gamma"])
    optimizer.build(variables)
    assert optimizer._decays == [True, False, False, True, True]
    # The layer-adaptation list is the given patterns only (Keras's API is about weight decay).
    assert optimizer._adapts == [True, False, True, True, True]


def test_decisions_are_made_once_at_build(variables):
    """Changing the patterns after build changes nothing: the steps look decisions up by index."""
    optimizer = LAMB(weight_decay=0.01, exclude_from_weight_decay=["bias"])
    optimizer.build(variables)
    optimizer._variable_selection = VariableSelection(["kernel"])
    assert [optimizer._use_weight_decay(v) for v in variables] == [True, False, True, True, True]


def test_model_paths_are_what_patterns_see():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense"),
                              keras.layers.LayerNormalization(name="layer_normalization")], name="model")
    optimizer = LAMB(weight_decay=0.01, exclude_from_weight_decay=["layer_normalization", "bias"])
    optimizer.build(model.trainable_variables)
    decided = {v.path: d for v, d in zip(model.trainable_variables, optimizer._decays)}
    assert decided == {"model/dense/kernel": True, "model/dense/bias": False,
                       "model/layer_normalization/gamma": False, "model/layer_normalization/beta": False}
