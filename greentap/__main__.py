"""``python -m greentap``: the same as ``tap-forward``."""

import sys

from greentap.cli import main

sys.exit(main())
