"""``python -m warppack``: the same as the ``warppack`` console script."""

import sys

from warppack.cli.main import main

sys.exit(main())
