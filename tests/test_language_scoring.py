"""Scoring other languages: the basic_multilingual normaliser, corpus CER, the ASR language reaching
Whisper's generate, `xytok score --asr_language zh` on Mandarin speech (espeak-ng `cmn`), RESULTS.md
headers per test set, and the probe's character vocabulary from Mandarin training text.

The Whisper model is tiny and randomly initialised (built here, saved with save_pretrained): its
transcripts are garbage, so the checks are on what is counted and stated, not on accuracy."""
import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from golden import TINY_A
from xytok.eval.normalizer import (BasicEnglishNormalizer, BasicMultilingualNormalizer, get_normalizer,
                                   join_split_chars)
from xytok.eval.wer import corpus_error_counts, resolve_asr_metric

ZH = BasicMultilingualNormalizer()


# ----------------------------------------------------------------------------- normaliser
@pytest.mark.parametrize("text,expected", [
    # full-width and CJK punctuation removed, Han split into one token per character
    ("你好，世界！（测试）「引号」『书』《名》：是；吗？、。", "你 好 世 界 测 试 引 号 书 名 是 吗"),
    # mixed Mandarin + English: Latin words stay whole and are lower-cased
    ("我用iPhone拍照，很OK。", "我 用 iphone 拍 照 很 ok"),
    # full-width Latin letters and digits -> half-width; the ideographic space separates
    ("ＡＢＣ\u3000１２３", "abc 123"),
    # Japanese: kana split like Han, the middle dot is punctuation, half-width katakana folded
    ("カタカナ・ひらがな、東京へ行く。", "カ タ カ ナ ひ ら が な 東 京 へ 行 く"),
    ("ｶﾀｶﾅー", "カ タ カ ナ ー"),
    # numbers as written: no digit <-> word conversion in either direction
    ("二十个，20个", "二 十 个 20 个"),
    # Hangul is space-delimited: words are not split into syllables
    ("안녕하세요, 세계!", "안녕하세요 세계"),
    # English: apostrophes kept word-internally as basic_english does
    ("Don't STOP — 'quoted'", "don't stop quoted"),
])
def test_basic_multilingual(text, expected):
    assert ZH(text) == expected


def test_normaliser_selection_and_description():
    assert "二十 and 20 differ" in ZH.description and ZH.name == "basic_multilingual"
    assert ZH("二十") != ZH("20") and ZH("２０") == ZH("20") == "20"
    assert get_normalizer("auto", language="zh-CN").name == "basic_multilingual"
    assert get_normalizer("auto", language="en").name == "basic_english"
    assert get_normalizer("auto").name == "basic_english"
    # the English normaliser is untouched by the multilingual one
    assert BasicEnglishNormalizer()("Hello, World! It's 20") == "hello world it's 20"
    # for character-level models: spaces next to Han/kana removed, English word spaces kept
    assert join_split_chars(ZH("我用 iPhone 拍照, hello world。")) == "我用iphone拍照hello world"


# ----------------------------------------------------------------------------- corpus CER
def test_corpus_cer_counts_characters_without_spaces():
    refs = {"a": "今天天气很好。", "b": "我爱北京", "c": "hello world"}
    hyps = {"a": "今天天汽很好", "b": "我爱北京天安门", "c": "hello word"}
    c = corpus_error_counts(refs, hyps, ZH, unit="char")
    # a: 气->汽 (1 sub of 6); b: 天安门 inserted (3 ins, 4 chars); c: "helloworld" vs "helloword" (1 del of 10)
    assert (c.sub, c.ins, c.dele, c.n_ref, c.n_utts) == (1, 3, 1, 20, 3)
    assert c.rate == pytest.approx(5 / 20)
    assert c.kaldi_line("CER") == "%CER 25.00 [ 5 / 20, 3 ins, 1 del, 1 sub ]"
    w = corpus_error_counts(refs, hyps, ZH)  # word tokens: Han characters and whole Latin words
    assert (w.sub, w.ins, w.dele, w.n_ref) == (2, 3, 0, 12)
    assert c.per_utt == {"a": (1, 6), "b": (3, 4), "c": (1, 10)}


def test_asr_metric_choice():
    assert resolve_asr_metric("auto", "zh") == resolve_asr_metric("auto", "zh-CN") == "cer"
    assert resolve_asr_metric("auto", "ja") == resolve_asr_metric("auto", "th") == "cer"
    assert resolve_asr_metric("auto", "en") == resolve_asr_metric("auto", "ko") == "wer"
    assert resolve_asr_metric("wer", "zh") == "wer" and resolve_asr_metric("cer", "en") == "cer"
    with pytest.raises(ValueError, match="ASR metric"):
        resolve_asr_metric("ter", "en")


def test_cli_help_lists_the_cer_languages():
    """The hand-written language lists of --help (the parsers import no metric code) match CER_LANGUAGES."""
    from xytok.bin.probe import __doc__ as probe_doc
    from xytok.bin.score import get_parser
    from xytok.eval.wer import CER_LANGUAGES

    listed = "(" + ", ".join(sorted(CER_LANGUAGES, key=["zh", "yue", "ja", "th", "lo", "my", "km", "bo"].index)) + ")"
    metric_help = next(a.help for a in get_parser()._actions if a.dest == "asr_metric")
    assert listed in " ".join(metric_help.split()) and listed in " ".join(probe_doc.split())


# ----------------------------------------------------------------------------- tiny multilingual Whisper
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|zh|>", "<|translate|>", "<|transcribe|>",
            "<|notimestamps|>"]


def _save_tiny_whisper(path: Path, multilingual: bool) -> dict:
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer)

    torch.manual_seed(0)
    path.mkdir()
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate([chr(c) for c in range(97, 123)] + ["Ġ"])}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tok = WhisperTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    specials = SPECIALS if multilingual else [s for s in SPECIALS if s not in ("<|en|>", "<|zh|>", "<|translate|>")]
    tok.add_special_tokens({"additional_special_tokens": specials})
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok).save_pretrained(path)
    ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    model = WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_target_positions=32,
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot))
    gen = dict(decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
               no_timestamps_token_id=ids["<|notimestamps|>"], max_initial_timestamp_index=50)
    if multilingual:  # what the openai/whisper-* multilingual checkpoints carry
        gen.update(is_multilingual=True, lang_to_id={"<|en|>": ids["<|en|>"], "<|zh|>": ids["<|zh|>"]},
                   task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]})
    model.generation_config = GenerationConfig(**gen)
    model.save_pretrained(path)
    return ids


@pytest.fixture(scope="module")
def whisper_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("whisper_ml")
    return {"multi": root / "multi", "multi_ids": _save_tiny_whisper(root / "multi", True),
            "en_only": root / "en_only", "en_ids": _save_tiny_whisper(root / "en_only", False)}


def _decoder_prompt(asr, wav) -> list[int]:
    """Token ids the decoder is first run on inside generate (its forced prompt)."""
    seen = []
    hook = asr.model.model.decoder.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((kwargs.get("input_ids") if kwargs.get("input_ids") is not None
                                               else args[0]).detach().clone()), with_kwargs=True)
    try:
        asr.transcribe(wav)
    finally:
        hook.remove()
    return seen[0][0].tolist()


def test_whisper_language_reaches_generate(whisper_dirs):
    from xytok.eval.asr import get_asr_backend

    ids = whisper_dirs["multi_ids"]
    wav = np.random.default_rng(0).normal(size=16000).astype(np.float32) * 0.1
    prompts = {}
    for lang in ("zh", "zh-CN", "en"):
        asr = get_asr_backend("whisper", str(whisper_dirs["multi"]), language=lang)
        assert asr.gen_kwargs == {"language": lang.split("-")[0], "task": "transcribe"}
        prompts[lang] = _decoder_prompt(asr, wav)
    start = [ids["<|startoftranscript|>"]]
    tail = [ids["<|transcribe|>"], ids["<|notimestamps|>"]]
    assert prompts["zh"][:4] == start + [ids["<|zh|>"]] + tail == prompts["zh-CN"][:4]
    assert prompts["en"][:4] == start + [ids["<|en|>"]] + tail
    with pytest.raises(ValueError, match=r"no language token <\|fr\|>; it knows: en, zh"):
        get_asr_backend("whisper", str(whisper_dirs["multi"]), language="fr")
    # an English-only checkpoint transcribes English (no language forcing) and refuses Mandarin
    assert get_asr_backend("whisper", str(whisper_dirs["en_only"]), language="en").gen_kwargs == {}
    with pytest.raises(ValueError, match="English-only"):
        get_asr_backend("whisper", str(whisper_dirs["en_only"]), language="zh")
    for backend in ("pocketsphinx", "hubert"):
        with pytest.raises(ValueError, match=f"the {backend} ASR backend is English-only.*--asr_backend whisper"):
            get_asr_backend(backend, None, language="zh")


# ----------------------------------------------------------------------------- Mandarin test set
MANDARIN = {"spk1-u1": "我用iPhone拍照。", "spk1-u2": "今天天气很好！", "spk2-u3": "二十个苹果，20个梨。"}


def _speak(text: str, path: Path, seed: int) -> None:
    """Mandarin speech by espeak-ng (`cmn`) when installed, else a deterministic stand-in signal."""
    if shutil.which("espeak-ng"):
        subprocess.run(["espeak-ng", "-v", "cmn", "-w", str(path), text], check=True, capture_output=True)
    else:  # pragma: no cover - espeak-ng is in the CI image
        t = np.arange(16000) / 16000
        sf.write(path, 0.2 * np.sin(2 * np.pi * (180 + 40 * seed) * t) * np.hanning(len(t)), 16000)


@pytest.fixture(scope="module")
def mandarin_set(tmp_path_factory):
    d = tmp_path_factory.mktemp("mandarin")
    (d / "wav").mkdir()
    for i, (utt, text) in enumerate(MANDARIN.items()):
        _speak(text, d / "wav" / f"{utt}.wav", i)
    (d / "wav.scp").write_text("".join(f"{u} {d}/wav/{u}.wav\n" for u in MANDARIN))
    (d / "text").write_text("".join(f"{u} {t}\n" for u, t in MANDARIN.items()))
    return d


def test_score_mandarin_reports_cer(whisper_dirs, mandarin_set, tmp_path, capsys):
    from xytok.bin.score import main as score_main

    d = mandarin_set
    out = tmp_path / "score"
    rc = score_main(["--ref", str(d / "wav.scp"), "--hyp", str(d / "wav.scp"), "--text", str(d / "text"),
                     "--metrics", "wer", "--out", str(out), "--asr_backend", "whisper",
                     "--asr_model", str(whisper_dirs["multi"]), "--asr_language", "zh"])
    assert rc == 0
    printed = capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    w = s["wer"]
    assert w["metric"] == "cer" and w["unit"] == "char" and w["asr_language"] == "zh"
    assert w["normalizer"] == "basic_multilingual" and "二十 and 20 differ" in w["normalizer_description"]
    assert "written without spaces" in w["metric_choice"]
    assert s["protocol"]["asr_language"] == "zh" and "spaces removed" in s["protocol"]["wer"]
    # characters of the normalised references, spaces removed: 我用iphone拍照 (10) + 今天天气很好 (6)
    # + 二十个苹果20个梨 (9); word tokens would be 5 + 6 + 7
    n_chars = sum(len(ZH(t).replace(" ", "")) for t in MANDARIN.values())
    assert n_chars == 25
    for k in ("recon_vs_text", "ref_vs_text"):
        assert w[k]["n_utts"] == 3 and w[k]["n_ref"] == n_chars
        assert w[k]["kaldi"].startswith("%CER ")
        assert w[k]["rate"] == pytest.approx(w[k]["errors"] / n_chars)
    # the same audio on both sides through a deterministic ASR: identical transcripts
    assert w["recon_vs_asr_ref"]["errors"] == 0
    lines = (out / "wer.txt").read_text().splitlines()
    assert "language zh" in lines[0] and "normaliser basic_multilingual" in lines[0]
    assert all(ln.startswith("%CER ") for ln in lines[1:]) and len(lines) == 4
    assert (out / "utt_scores.tsv").read_text().splitlines()[0] == "utt_id\tcer"
    assert "CER (auto: language 'zh'" in printed and "%CER" in printed

    # an English-only backend is refused before anything is scored (exit 2, names it, suggests whisper)
    rc = score_main(["--ref", str(d / "wav.scp"), "--hyp", str(d / "wav.scp"), "--metrics", "wer",
                     "--out", str(tmp_path / "ps"), "--asr_backend", "pocketsphinx", "--asr_language", "zh"])
    err = capsys.readouterr().err
    assert rc == 2 and "pocketsphinx" in err and "English-only" in err and "--asr_backend whisper" in err
    assert not (tmp_path / "ps" / "summary.json").exists()


# ----------------------------------------------------------------------------- RESULTS.md
def _english_summary(out: Path) -> dict:
    """A scored English test set through the real summary writer (transcripts given, no ASR run)."""
    from xytok.eval.scoring import ScoreConfig, UttResult
    from xytok.eval.summary import write_outputs

    texts = {"e1": "the cat sat", "e2": "on the mat"}
    results = [UttResult("e1", asr_ref="the cat sat", asr_hyp="the cat sad"),
               UttResult("e2", asr_ref="on the mat", asr_hyp="on the mat")]
    cfg = ScoreConfig(metrics=("wer",), asr_language="en")
    return write_outputs(out, results, ("wer",), cfg, get_normalizer("auto", language="en"), texts)


def test_results_md_names_cer_and_wer_columns_per_test_set(tmp_path):
    from xytok.bin.make_results import main as make_results
    from xytok.eval.results import comparison_table, model_row
    from xytok.eval.scoring import ScoreConfig, UttResult
    from xytok.eval.summary import write_outputs

    exp = tmp_path / "exp" / "m" / "decode"
    zh_results = [UttResult("z1", asr_ref="我爱北京", asr_hyp="我爱背景"),
                  UttResult("z2", asr_ref="你好", asr_hyp="你好")]
    zh = write_outputs(exp / "test_zh" / "score", zh_results, ("wer",), ScoreConfig(metrics=("wer",), asr_language="zh"),
                       get_normalizer("auto", language="zh"), {"z1": "我爱北京。", "z2": "你好！"})
    en = _english_summary(exp / "test_en" / "score")
    assert zh["wer"]["metric"] == "cer" and en["wer"]["metric"] == "wer"
    assert zh["wer"]["recon_vs_text"]["rate"] == pytest.approx(2 / 6)  # 爱北京 -> 爱背景: 2 of 6 characters
    assert en["wer"]["recon_vs_text"]["rate"] == pytest.approx(1 / 6)  # sat -> sad: 1 of 6 words
    # the model's probe ran on Mandarin: its column is CER
    (exp.parent / "probe").mkdir()
    (exp.parent / "probe" / "probe.json").write_text(json.dumps(
        {"metric": "cer", "wer": 0.9, "cer": 0.41, "language": "zh", "vocab_size": 3000, "valid_oov_chars": 7,
         "normalizer_name": "basic_multilingual", "probe_config": {},
         "wer_counts": {"kaldi": "%WER 90.00 [ 9 / 10, 0 ins, 0 del, 9 sub ]"},
         "cer_counts": {"kaldi": "%CER 41.00 [ 41 / 100, 0 ins, 0 del, 41 sub ]"}}))
    assert make_results(["--recipe_dir", str(tmp_path), "--exp_dir", str(exp), "--no_plots"]) == 0
    md = (tmp_path / "RESULTS.md").read_text()
    sec_en, sec_zh = md.split("## test_en")[1].split("## test_zh")
    header_zh = next(ln for ln in sec_zh.splitlines() if ln.startswith("| Codec"))
    header_en = next(ln for ln in sec_en.splitlines() if ln.startswith("| Codec"))
    assert "| CER (recon) |" in header_zh and "WER (recon)" not in header_zh
    assert "| WER (recon) |" in header_en and "CER (recon)" not in header_en
    assert "| CER |" in header_zh and "| WER |" not in header_zh  # probe column from probe.json
    assert "33.33%" in sec_zh and "16.67%" in sec_en and "0.41" in sec_zh
    assert "language `zh`" in sec_zh and "spaces removed" in sec_zh and "language `en`" in sec_en
    assert "3000 characters of the training text" in sec_zh

    # one table over both test sets: both columns, each row filled in its own
    entries = [{"name": "m", "test_set": ts, "summary": s, "probe": None, "info": {"bps": 1000, "frame_rate": 12.5}}
               for ts, s in (("test_zh", zh), ("test_en", en))]
    table = comparison_table(entries, with_paper=False)
    cols = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert "WER (recon)" in cols and "CER (recon)" in cols
    rows = {r["Source"]: r for r in ({**model_row("m", e["summary"], None, e["info"]),
                                      "Source": e["test_set"]} for e in entries)}
    assert rows["test_zh"]["CER (recon)"] == "33.33%" and "WER (recon)" not in rows["test_zh"]
    assert rows["test_en"]["WER (recon)"] == "16.67%" and "CER (recon)" not in rows["test_en"]


# ----------------------------------------------------------------------------- probe vocabulary
def test_probe_vocabulary_from_mandarin_train_text(mandarin_set, tmp_path):
    """The probe on a tiny codec: its characters are the Mandarin training text's, validation
    characters it never saw are counted, CER is its primary metric."""
    from xytok.bin.probe import main as probe_main

    torch.set_num_threads(1)
    src = mandarin_set
    train, valid = tmp_path / "train", tmp_path / "valid"
    for d, utts in ((train, list(MANDARIN)), (valid, ["spk1-u2"])):
        d.mkdir()
        (d / "wav.scp").write_text("".join(f"{u} {src}/wav/{u}.wav\n" for u in utts))
    (train / "text").write_text("".join(f"{u} {t}\n" for u, t in MANDARIN.items()))
    (valid / "text").write_text("spk1-u2 今天天气很冷！\n")  # 冷 is not in the training text
    out = tmp_path / "probe"
    assert probe_main(["--config", str(TINY_A / "config.yaml"), "--checkpoint", str(TINY_A / "model.ckpt"),
                       "--train_data", str(train), "--valid_data", str(valid), "--out", str(out),
                       "--epochs", "1", "--hidden", "8", "--language", "zh"]) == 0
    res = json.loads((out / "probe.json").read_text())
    train_chars = set("".join(join_split_chars(ZH(t)) for t in MANDARIN.values()))
    assert set(res["vocab"]) == train_chars and "个" in res["vocab"] and "，" not in res["vocab"]
    assert " " not in res["vocab"]  # Mandarin targets carry no spaces between characters...
    assert {"i", "p", "h", "o", "n", "e", "2", "0"} <= train_chars  # ...the Latin/digit characters are in
    assert res["metric"] == "cer" and res["language"] == "zh" and res["normalizer_name"] == "basic_multilingual"
    assert res["valid_ref_chars"] == 6 and res["valid_oov_chars"] == 1 and res["valid_oov_examples"] == ["冷"]
    assert res["cer_counts"]["n_ref"] == 6
    lines = (out / "wer.txt").read_text().splitlines()
    assert lines[0].startswith("%CER ") and lines[1].startswith("%WER ") and "1 of 6 reference characters" in lines[0]


def test_probe_vocab_rare_characters_share_unk():
    from xytok.eval.probe import UNK, CharVocab

    v = CharVocab(["你好你", "你们"], min_count=2)
    assert v.chars == ["你", UNK] and v.rare == {"好": 1, "们": 1}
    assert v.encode("你好猫") == [1, 2, 2]  # rare and unseen characters -> UNK
    assert "好" not in v and "你" in v and UNK not in v
    plain = CharVocab(["你好"])  # min_count 1: no UNK, unseen characters dropped as before
    assert plain.chars == ["你", "好"] and plain.encode("你猫") == [1]


def test_probe_learns_mandarin_characters():
    """Informative features (one-hot per character) -> the probe's CER on Mandarin falls well below
    that of noise features; the scoring runs on the language's normalised text (CER primary)."""
    from xytok.eval.probe import ProbeConfig, train_and_evaluate

    torch.set_num_threads(1)
    alphabet = "你好世界天气"
    words = ("你好", "世界", "天气", "好天")

    def synthetic(n, informative, rng):
        items, text = [], {}
        for i in range(n):
            t = "".join(rng.choice(words) for _ in range(3))
            f = np.zeros((len(t), len(alphabet)), np.float32)
            if informative:
                f[np.arange(len(t)), [alphabet.index(c) for c in t]] = 1.0
            f += 0.05 * rng.standard_normal(f.shape).astype(np.float32)
            items.append((f"u{i:03d}", f))
            text[f"u{i:03d}"] = t[:2] + "，" + t[2:] + "。"  # punctuation in the transcripts
        return items, text

    cfg = ProbeConfig(hidden=32, epochs=15, batch_size=8, lr=1e-2, seed=0, language="zh")
    res = {}
    for informative in (True, False):
        rng = np.random.default_rng(0)
        tr, ttr = synthetic(48, informative, rng)
        va, tva = synthetic(12, informative, rng)
        res[informative] = train_and_evaluate(tr, va, ttr, tva, cfg)
    assert res[True]["metric"] == "cer" and sorted(res[True]["vocab"]) == sorted(alphabet)
    assert res[True]["cer_counts"]["n_ref"] == 12 * 6
    assert res[True]["cer"] < 0.3 < res[False]["cer"]
