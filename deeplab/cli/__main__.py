"""``python -m deeplab.cli``: the same as the ``deeplab`` command (torchrun uses it)."""

import sys

from deeplab.cli import main

sys.exit(main())
