#!/usr/bin/env python3
"""Like run.pl, but each job's output also goes to stdout (ESPnet's stdout.pl).

Usage: stdout.pl [options] [JOB=1:N] log/x.JOB.log command args...  (options as run.pl)
"""
import importlib.machinery
import importlib.util
import os
import sys

# run.pl has no .py suffix, so load it explicitly.
_path = os.path.join(os.path.dirname(os.path.realpath(__file__)), "run.pl")
_loader = importlib.machinery.SourceFileLoader("xytok_run_pl", _path)
_spec = importlib.util.spec_from_loader("xytok_run_pl", _loader)
run_pl = importlib.util.module_from_spec(_spec)
_loader.exec_module(run_pl)

if __name__ == "__main__":
    run_pl.PROG = "stdout.pl"
    sys.exit(run_pl.main(sys.argv[1:], tee=True))
