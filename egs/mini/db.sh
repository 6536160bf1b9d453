# Corpus location. An environment variable of the same name overrides it.
# MINI_CORPUS: where local/data.sh builds the mini corpus (LibriSpeech layout under $MINI_CORPUS/LibriSpeech).
MINI_CORPUS=${MINI_CORPUS:-db}
