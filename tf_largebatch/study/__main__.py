"""``python -m tf_largebatch.study``: the same as ``tf-largebatch demo``."""

import sys

from tf_largebatch.study.cli import main

sys.exit(main())
