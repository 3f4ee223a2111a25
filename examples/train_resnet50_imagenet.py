"""ResNet-50 on ImageNet (TFDS imagenet2012 or TFRecords) with ``tf-largebatch train``.

The model and input code live in ``tf_largebatch.pipelines``; this script only
picks a default shipped experiment (``tf-largebatch train --experiment NAME``, so it
also works from a pip install). Every argument is passed on::

    python examples/train_resnet50_imagenet.py --smoke   # a CPU check in seconds (synthetic data where the real data is not on this machine)
    python examples/train_resnet50_imagenet.py --experiment <name> \\
        --set strategy.tpu=<tpu-name> --set training.model_dir=gs://<bucket>/run
"""

import sys

from tf_largebatch_cli import main  # the tf-largebatch command (quiet TensorFlow start-up)

DEFAULT_EXPERIMENT = "resnet50_vrlars_32k_v3-512"

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--config" not in args and "--experiment" not in args:
        args = ["--experiment", DEFAULT_EXPERIMENT, *args]
    sys.exit(main(["train", *args]))
