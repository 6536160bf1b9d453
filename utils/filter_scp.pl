#!/usr/bin/env python3
"""filter_scp.pl [--exclude] [-f N] idlist [in.scp] > out.scp

Prints the lines of in.scp (or stdin) whose field N (default 1) is in idlist (--exclude: is not),
in the order of in.scp."""
import os
import sys

# utils/ is next to the xytok package; this works with any python3 (the core is stdlib only).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
from xytok.bin.datadir import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["filter-scp"] + sys.argv[1:]))
