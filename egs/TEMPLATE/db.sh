# Corpus location. An environment variable of the same name overrides it.
# CORPUS: the directory holding metadata.txt (path|speaker|text|set lines) or train.txt, dev.txt,
# test.txt (path|speaker|text lines); relative audio paths are relative to it.
CORPUS=${CORPUS:-db}
