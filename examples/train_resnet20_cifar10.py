"""ResNet-20 on CIFAR-10 (the SNGM paper's Table 2 setting) with ``tf-largebatch train``.

The model and input code live in ``tf_largebatch.pipelines``; this script only
picks a default shipped experiment (``tf-largebatch train --experiment NAME``, so it
also works from a pip install). Every argument is passed on::

    python examples/train_resnet20_cifar10.py --smoke   # a CPU check in seconds (synthetic data where the real data is not on this machine)
    python examples/train_resnet20_cifar10.py --experiment <name> \\
        --set strategy.tpu=<tpu-name> --set training.model_dir=gs://<bucket>/run
"""

import sys

from tf_largebatch_cli import main  # the tf-largebatch command (quiet TensorFlow start-up)

DEFAULT_EXPERIMENT = "resnet20_sngm_1024_v3-8"

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--config" not in args and "--experiment" not in args:
        args = ["--experiment", DEFAULT_EXPERIMENT, *args]
    sys.exit(main(["train", *args]))
