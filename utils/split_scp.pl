#!/usr/bin/env python3
"""Kaldi's split_scp.pl: split_scp.pl [--utt2spk=FILE] in.scp out.1.scp ... out.N.scp

Contiguous split into N parts whose sizes differ by at most one line; with --utt2spk the lines of
one speaker stay in the same part."""
import os
import sys

# utils/ is next to the xytok package; this works with any python3 (the core is stdlib only).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
from xytok.bin.datadir import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["split-scp"] + sys.argv[1:]))
