"""Data handling: Kaldi data directories (datadir), downloads (download)."""
