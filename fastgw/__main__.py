"""``python -m fastgw``: the same as the ``fastgw`` console script (see fastgw.cli)."""

import sys

from fastgw.cli import main

if __name__ == "__main__":
    sys.exit(main())
