"""``python -m warppack``: the same as the ``warppack`` console script."""

import sys

from warppack._cli import main

sys.exit(main())
