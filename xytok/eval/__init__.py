"""Evaluation: codec metrics (PESQ, STOI, SIM), ASR-based WER, the text-alignment probe, RESULTS.md."""
