"""``python -m deepeyes_gym``: the same command line as ``deepeyes-gym``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
