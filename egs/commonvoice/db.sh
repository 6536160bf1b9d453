# Corpus locations. An environment variable of the same name overrides the value here.
# COMMONVOICE: the directory that holds a Common Voice release's <lang>/ folders, i.e. the
# extracted cv-corpus-<version>/ (<lang>/clips/*.mp3, <lang>/train.tsv ...); a directory holding one
# extracted cv-corpus-*/ works too. Releases need an account: download
# cv-corpus-<version>-<lang>.tar.gz from https://commonvoice.mozilla.org/datasets, then either
# extract it and point COMMONVOICE here, or pass --local_data_opts "--archive PATH" (extracted into
# COMMONVOICE once).
COMMONVOICE=${COMMONVOICE:-downloads}
