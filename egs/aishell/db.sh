# Corpus locations. An environment variable of the same name overrides the value here.
# AISHELL: the directory that holds (or will hold, after download) data_aishell/ (wav/, transcript/).
AISHELL=${AISHELL:-downloads}
