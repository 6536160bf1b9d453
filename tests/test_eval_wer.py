"""Corpus WER counts on hand-made pairs, Kaldi formatting and the normalisers."""
import json

import pytest

from xytok.eval import normalizer
from xytok.eval.normalizer import BasicEnglishNormalizer, get_normalizer
from xytok.eval.wer import corpus_error_counts


def test_counts_single_pairs():
    c = corpus_error_counts({"u": "a b c d"}, {"u": "a x c d e"})
    assert (c.sub, c.ins, c.dele, c.n_ref) == (1, 1, 0, 4)
    c = corpus_error_counts({"u": "a b c d"}, {"u": "a d"})
    assert (c.sub, c.ins, c.dele) == (0, 0, 2)
    c = corpus_error_counts({"u": "a b c"}, {"u": "a b c"})
    assert c.errors == 0 and c.rate == 0.0


def test_missing_or_empty_hypothesis_is_all_deletions():
    c = corpus_error_counts({"u": "one two three"}, {})
    assert (c.sub, c.ins, c.dele) == (0, 0, 3)
    c = corpus_error_counts({"u": ""}, {"u": "extra words"})
    assert (c.ins, c.n_ref) == (2, 0)


def test_corpus_level_not_mean_of_utterances():
    refs = {"a": "w1", "b": "w1 w2 w3 w4 w5 w6 w7 w8 w9"}
    hyps = {"a": "zz", "b": "w1 w2 w3 w4 w5 w6 w7 w8 w9"}
    c = corpus_error_counts(refs, hyps)
    assert c.rate == pytest.approx(1 / 10)  # a mean of per-utt WERs would give 0.5
    assert c.kaldi_line() == "%WER 10.00 [ 1 / 10, 0 ins, 0 del, 1 sub ]"
    assert c.n_sentence_errors == 1 and c.per_utt["a"] == (1, 1)


def test_kaldi_line_all_fields():
    c = corpus_error_counts({"u1": "a b c d", "u2": "e f"}, {"u1": "a x c d e", "u2": "f"})
    assert c.kaldi_line() == "%WER 50.00 [ 3 / 6, 1 ins, 1 del, 1 sub ]"


def test_normaliser_applied_to_both_sides():
    norm = BasicEnglishNormalizer()
    assert norm("Hello, World!  It’s  'quoted' -- well-known 42.") == "hello world it's quoted well known 42"
    c = corpus_error_counts({"u": "Mr. Smith's DOG, barked!"}, {"u": "mr smith’s dog barked"}, norm)
    assert c.errors == 0 and c.n_ref == 4
    c = corpus_error_counts({"u": "Mr. Smith's DOG"}, {"u": "mr smith’s dog"})  # no normaliser
    assert c.errors == 3


def test_cer_counts_characters():
    c = corpus_error_counts({"u": "ab cd"}, {"u": "abd"}, unit="char")
    assert (c.n_ref, c.dele, c.sub, c.ins) == (4, 1, 0, 0)


def test_normaliser_registry():
    assert get_normalizer("none")("a  b ") == "a b"
    assert get_normalizer("whisper_english_nospelling")("Mister Smith, 2 dogs!").startswith("mister smith")
    with pytest.raises(ValueError, match="unknown normalizer"):
        get_normalizer("klingon")


def test_whisper_english_applies_the_spelling_map(tmp_path):
    spelling = tmp_path / "english.json"
    spelling.write_text(json.dumps({"colour": "color", "realise": "realize"}))
    norm = get_normalizer("whisper_english", spelling_map=spelling)
    assert norm("The Colour, I realise!") == "the color i realize"
    assert "2 entries" in norm.description and str(spelling) in norm.description
    # without the map British spellings survive, under a name that says so
    plain = get_normalizer("whisper_english_nospelling")
    assert plain("The Colour, I realise!") == "the colour i realise"
    assert "WITHOUT" in plain.description
    with pytest.raises(ValueError, match="only used by whisper_english"):
        get_normalizer("basic_english", spelling_map=spelling)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(RuntimeError, match="bad.json: expected a JSON object"):
        get_normalizer("whisper_english", spelling_map=tmp_path / "bad.json")


def test_whisper_english_without_any_map_fails_loudly(monkeypatch):
    def offline():
        raise OSError("offline")

    monkeypatch.setattr(normalizer, "_openai_whisper_english_json", lambda: None)
    monkeypatch.setattr(normalizer, "_hub_spelling_map", offline)
    with pytest.raises(RuntimeError, match="spelling map was not found.*whisper_english_nospelling"):
        get_normalizer("whisper_english")
