"""``python -m jangdok``: the ``jangdok`` command."""

import sys

from .cli import main

sys.exit(main())
