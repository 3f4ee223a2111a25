"""BERT-large pretraining, two phases (sequence 128, then 512) with ``tf-largebatch train``.

The model and input code live in ``tf_largebatch.pipelines``; this script only
picks a default config from ``tpu_configs/``. Every argument is passed on::

    python examples/train_bert_pretraining.py --smoke   # a CPU check in seconds (the data must be reachable)
    python examples/train_bert_pretraining.py --config tpu_configs/<file>.yaml \\
        --set strategy.tpu=<tpu-name> --set training.model_dir=gs://<bucket>/run
"""

import os
import sys

from tf_largebatch import cli

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "tpu_configs", "bert_large_vrlamb_64k-32k_v3-1024.yaml")

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--config" not in args:
        args = ["--config", DEFAULT_CONFIG, *args]
    sys.exit(cli.main(["train", *args]))
