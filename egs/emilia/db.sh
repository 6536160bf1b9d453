# Corpus locations. An environment variable of the same name overrides the value here.
# EMILIA: the directory that holds Emilia/ and/or Emilia-YODAS/ (the Hugging Face layout of
# amphion/Emilia-Dataset, <subset>/<LANG>/<LANG>-B000000.tar ...) or, for the original OpenEmilia
# release, the <LANG>/ folders (<LANG>/<LANG>_B00000.jsonl + mp3 dirs). The layout is detected.
# With --local_data_opts "--download true --langs 'en zh'", shards are downloaded here.
EMILIA=${EMILIA:-downloads}
