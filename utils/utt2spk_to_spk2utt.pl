#!/usr/bin/env python3
"""utt2spk_to_spk2utt.pl [utt2spk] > spk2utt  (reads stdin without a file)"""
import os
import sys

# utils/ is next to the xytok package; this works with any python3 (the core is stdlib only).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
from xytok.bin.datadir import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["utt2spk-to-spk2utt"] + sys.argv[1:]))
