"""``python -m xytok <subcommand> ...`` — same as the ``xytok`` console script."""
import sys

from xytok.cli import main

if __name__ == "__main__":
    sys.exit(main())
