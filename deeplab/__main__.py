import sys

from deeplab.cli import main

sys.exit(main())
