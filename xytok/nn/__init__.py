"""Building blocks of the XY-Tokenizer generator (one concept per file)."""
