"""Reference pipelines: ResNet-50/ImageNet, ResNet-20/CIFAR-10, BERT pretraining.

``tf_largebatch.pipelines.train.run`` trains any config of ``tpu_configs/``;
the model builders are in :mod:`~tf_largebatch.pipelines.models`, the input
pipelines in :mod:`~tf_largebatch.pipelines.imagenet`,
:mod:`~tf_largebatch.pipelines.cifar` and :mod:`~tf_largebatch.pipelines.bert`.
Which task uses which pipeline and models, and each task's ``--smoke``
overrides, are registered in :mod:`tf_largebatch.config.registry`.
This module stays free of TensorFlow imports (the CLI's ``--help`` is fast).
"""


def task_module(task):
    """The input-pipeline module of ``task`` (imported lazily), from the registry."""
    from tf_largebatch.config import registry

    return registry.TASKS.get(task, "task").load_inputs()
