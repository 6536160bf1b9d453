"""One thin entry point per recipe stage; each runs as `python -m xytok.bin.NAME --help`."""
