"""``python -m minbert``: the command line, as torchrun launches it (``torchrun ... -m minbert
train ...``)."""

import sys

from minbert.cli import main

sys.exit(main())
