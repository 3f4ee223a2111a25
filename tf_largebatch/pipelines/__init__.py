"""Reference pipelines: ResNet-50/ImageNet, ResNet-20/CIFAR-10, BERT pretraining.

``tf_largebatch.pipelines.train.run`` trains any config of ``tpu_configs/``;
the model builders are in :mod:`~tf_largebatch.pipelines.models`, the input
pipelines in :mod:`~tf_largebatch.pipelines.imagenet`,
:mod:`~tf_largebatch.pipelines.cifar` and :mod:`~tf_largebatch.pipelines.bert`.
This module stays free of TensorFlow imports (the CLI's ``--help`` is fast).
"""

_SMOKE_COMMON = {
    "strategy": {"type": "mirrored", "num_cpu_replicas": 2, "devices": None, "tpu": None},
    "precision": "float32",
    "training": {
        "global_batch_size": 4,
        "steps": 2,
        "epochs": None,
        "steps_per_loop": 1,
        "steps_per_execution": 1,
        "gradient_accumulation_steps": 1,
        "eval_steps": 1,
        "verbose": 2,
        "model_dir": "/tmp/tf_largebatch_smoke",
    },
    "schedule": {"learning_rate": 0.01, "warmup_steps": 1, "warmup_epochs": None, "decay_steps": None,
                 "boundaries": [1], "boundaries_epochs": None},
    "data": {"shuffle_buffer": 8, "cache": False},
}


def _merge(base, extra):
    from tf_largebatch.config import deep_merge

    return deep_merge(base, extra)


# Per task family: what ``--smoke`` changes so a config trains end-to-end on a
# CPU in seconds: a small learning rate (the published peak rates are for huge
# batches), 2 steps, and k = 2 gradient samples for the VR optimizers: 2
# logical-CPU replicas, or for ResNet-50 (slow to compile twice) one device with
# 2 accumulation micro-steps.
SMOKE_OVERRIDES = {
    "imagenet": _merge(_SMOKE_COMMON, {
        # 64 pixels and 4 images per micro-batch: at 32 pixels ResNet-50's last
        # stage is 1x1, and batch norm over 2 values makes the gradients explode.
        "data": {"image_size": 64},
        "strategy": {"type": "one_device", "num_cpu_replicas": None},
        "training": {"global_batch_size": 8, "gradient_accumulation_steps": 2},
    }),
    "cifar10": _merge(_SMOKE_COMMON, {"data": {"image_size": 32}, "model": {"args": {"depth": 8, "width": 4}}}),
    "bert_pretraining": _merge(
        _SMOKE_COMMON,
        {"model": {"args": {"num_layers": 1, "num_heads": 2, "hidden_dim": 16, "intermediate_dim": 32}}},
    ),
}


def task_module(task):
    """The input-pipeline module of ``task`` (imported lazily)."""
    import importlib

    name = {"imagenet": "imagenet", "cifar10": "cifar", "bert_pretraining": "bert"}[task]
    return importlib.import_module(f"tf_largebatch.pipelines.{name}")
