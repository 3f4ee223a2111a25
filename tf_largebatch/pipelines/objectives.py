"""What each task trains on: the loss and metrics for ``Model.compile``.

Each function is named by its task's entry in
:mod:`tf_largebatch.config.registry` (``TaskSpec.objective``), which also lists
the metric names ``fit`` logs (``TaskSpec.metrics``, what
``callbacks.best_metric`` may name).
"""

import keras


def _classification(cfg, *, top5):
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.loss.label_smoothing)
    metrics = [keras.metrics.CategoricalAccuracy("accuracy")]
    if top5:
        metrics.append(keras.metrics.TopKCategoricalAccuracy(5, name="top5_accuracy"))
    return loss, metrics, None


def imagenet(cfg):
    """``(loss, metrics, None)``: label-smoothed cross-entropy on logits, top-1 and top-5 accuracy."""
    return _classification(cfg, top5=True)


def cifar10(cfg):
    """``(loss, metrics, None)``: label-smoothed cross-entropy on logits, accuracy."""
    return _classification(cfg, top5=False)


def bert_pretraining(cfg):
    """``(loss, None, weighted_metrics)``: masked-LM and next-sentence cross-entropy and accuracy.

    The masked-LM accuracy is weighted by the input's sample weights (unused
    prediction slots weigh 0).
    """
    del cfg
    loss = {
        "mlm": keras.losses.SparseCategoricalCrossentropy(from_logits=True, name="mlm_loss"),
        "nsp": keras.losses.SparseCategoricalCrossentropy(from_logits=True, name="nsp_loss"),
    }
    weighted = {
        "mlm": [keras.metrics.SparseCategoricalAccuracy("accuracy")],
        "nsp": [keras.metrics.SparseCategoricalAccuracy("accuracy")],
    }
    return loss, None, weighted
