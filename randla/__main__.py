"""``python -m randla``: the ``randla`` command."""

import sys

from .cli import main

sys.exit(main())
