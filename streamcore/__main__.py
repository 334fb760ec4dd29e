"""``python -m streamcore`` is the ``streamcore`` command."""

import sys

from .cli import main

sys.exit(main())
