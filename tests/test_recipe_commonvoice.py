"""egs/commonvoice on Common Voice releases made here (real MP3 clips, tsv files with the release's
header plus an unknown column; zh-CN, so the text is not ASCII and the locale has a hyphen):
stages 1-5 of the recipe, a release tarball, the missing-release message, and the adaptation path
(stage 5 from a tiny released-format checkpoint with a tiny multilingual Whisper and a tiny Qwen2 +
byte-level BPE tokenizer built offline, then stage 6)."""
import csv
import hashlib
import json
import math
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from recipe_helpers import REPO, assert_c_sorted, make_recipe, read_kv, run  # noqa: E402

from xytok.bin.commonvoice_data import DataPrepError, prepare, read_tsv  # noqa: E402

# Common Voice is MP3: the soundfile wheel setup.py installs bundles a libsndfile (>= 1.1) that writes
# it. Without MP3 the recipe cannot read a release either, so that is a failure, not a skip.
assert "MP3" in sf.available_formats(), "soundfile's libsndfile cannot read/write MP3 (needs libsndfile >= 1.1)"

SR = 48000  # Common Voice clips are 48 kHz MP3
# The header of a v17+ release with one column no release has (columns are read by name).
HEADER = ["client_id", "path", "sentence_id", "future_column", "sentence", "sentence_domain", "up_votes",
          "down_votes", "age", "gender", "accents", "variant", "locale", "segment"]
ZH = ["今天天气很好。", "我们一起去吃饭吧", "这是一个“测试”句子", "你好，世界！", "北京欢迎你",
      "他说\"好的\"然后走了", "学习中文很有意思", "火车马上就要开了", "请把门关上", "明天见"]
DE = ["Grüß Gott, schöne Straße.", "Die Bäume sind grün.", "Öfter mal Käse essen.", "Über den Fluss."]


def _client(name: str) -> str:
    return hashlib.sha512(name.encode()).hexdigest()  # release client_ids: 128 hex digits


def _mp3(path: Path, seconds: float, freq: float, rng) -> None:
    n = int(round(seconds * SR))
    t = np.arange(n) / SR
    wav = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(n)
    sf.write(path, wav.astype(np.float32), SR, format="MP3")


def make_release(root: Path, lang: str, sentences, seed: int = 0) -> dict:
    """root/<lang>/clips/*.mp3 + train/dev/test/validated/invalidated/other.tsv. Returns
    {"kept": {split: [(client_id, clip, sentence)]}, "dropped": {split: {reason: n}}}."""
    rng = np.random.default_rng(seed)
    d = root / lang
    (d / "clips").mkdir(parents=True)
    plan = {"train": [("spk_a", 3), ("spk_b", 3)], "dev": [("spk_c", 2)], "test": [("spk_d", 2)]}
    kept = {s: [] for s in plan}
    rows = {s: [] for s in plan}
    k = 0
    for split, speakers in plan.items():
        for spk, n in speakers:
            for _ in range(n):
                clip = f"common_voice_{lang}_{1000 + k}.mp3"
                text = sentences[k % len(sentences)]
                _mp3(d / "clips" / clip, float(rng.uniform(1.0, 1.5)), 150 + 20 * k, rng)
                rows[split].append((_client(spk), clip, text))
                kept[split].append((_client(spk), clip, " ".join(text.split())))
                k += 1
    # unusable rows of train: an empty sentence (its clip exists) and a clip missing from clips/
    _mp3(d / "clips" / f"common_voice_{lang}_900.mp3", 1.0, 200, rng)
    rows["train"] += [(_client("spk_a"), f"common_voice_{lang}_900.mp3", "  "),
                      (_client("spk_b"), f"common_voice_{lang}_901.mp3", sentences[0])]
    rows["train"].insert(1, (_client("spk_a"), f"common_voice_{lang}_902.mp3", sentences[1]))  # missing too

    def write(name, items):
        with open(d / f"{name}.tsv", "w", encoding="utf-8", newline="") as f:
            f.write("\t".join(HEADER) + "\n")
            for cid, clip, text in items:
                values = {"client_id": cid, "path": clip, "sentence_id": hashlib.sha256(text.encode()).hexdigest(),
                          "future_column": "x", "sentence": text, "sentence_domain": "", "up_votes": "2",
                          "down_votes": "0", "age": "", "gender": "", "accents": "", "variant": "",
                          "locale": lang, "segment": ""}
                f.write("\t".join(values[h] for h in HEADER) + "\n")

    for s in plan:
        write(s, rows[s])
    write("validated", [r for s in plan for r in rows[s]])
    write("invalidated", [])
    write("other", [(_client("spk_e"), f"common_voice_{lang}_950.mp3", sentences[2])])
    return {"kept": kept, "dropped": {"train": {"empty sentence": 1, "missing clip": 2}}}


def _spk(cid: str) -> str:
    return cid[:16]


LANG, SUF = "zh-CN", "zh_CN"
SETS = {"train": f"train_{SUF}", "dev": f"dev_{SUF}", "test": f"test_{SUF}"}
STAGE_ARGS = ("--nj 1 --ngpu 0 --bpemode char --nbpe 100 --min_wav_duration 0.1 "
              "--stage1_config conf/train_stage1_debug.yaml --stage2_config conf/train_stage2_debug.yaml ")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """Stages 1-4 on the zh-CN release; the debug stage 5 (and 6) of this tree is the adaptation run
    below (the from-scratch debug configs are egs/emilia's, run by test_recipe_emilia)."""
    tmp = tmp_path_factory.mktemp("cv")
    made = make_release(tmp / "cv-corpus-99.0-2030-01-01", LANG, ZH)
    rdir = make_recipe(tmp, "commonvoice")
    env = {"COMMONVOICE": str(tmp / "cv-corpus-99.0-2030-01-01")}
    r = run(f"./run.sh --stage 1 --stop_stage 4 {STAGE_ARGS} --local_data_opts '--lang {LANG}'", rdir, env,
            timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return rdir, made, r, env


def test_recipe_stages_1_to_4(recipe):
    rdir, made, r, _ = recipe
    out = r.stdout + r.stderr
    for split, name in SETS.items():
        d = rdir / "data" / name
        for f in ("wav.scp", "text", "utt2spk", "spk2utt"):
            assert_c_sorted(d / f)
        text, spk, wav = read_kv(d / "text"), read_kv(d / "utt2spk"), read_kv(d / "wav.scp")
        want = {f"{_spk(c)}-{Path(clip).stem}": (t, _spk(c), clip) for c, clip, t in made["kept"][split]}
        assert set(text) == set(want)  # the empty-sentence and missing-clip rows are not there
        for u, (t, s, clip) in want.items():
            assert text[u] == t and spk[u] == s and u.startswith(s + "-")
            assert Path(wav[u]).is_absolute() and Path(wav[u]).name == clip
    # quotes are text (QUOTE_NONE), not csv quoting
    assert '他说"好的"然后走了' in read_kv(rdir / "data" / SETS["train"] / "text").values()
    assert "dropped: 1 empty sentence, 2 missing clip" in out
    # stage 2 dumped 16 kHz audio from the 48 kHz MP3s
    dumped = read_kv(rdir / "dump/raw" / SETS["test"] / "wav.scp")
    src = read_kv(rdir / "data" / SETS["test"] / "wav.scp")
    u = sorted(dumped)[0]
    info, ref = sf.info(dumped[u]), sf.info(src[u])
    assert info.samplerate == 16000 and ref.samplerate == SR
    assert abs(info.frames - ref.frames / 3) <= 0.03 * 16000  # MP3 encoder delay/padding, a few ms
    assert (rdir / "data/token_list/char100/bpe.model").is_file()
    assert (rdir / "dump/raw" / SETS["train"] / "feats.scp").is_file()
    assert "Stage 4:" in out and "Successfully finished" in out


def test_rerun_skips_prepared_release(recipe):
    rdir, _, _, env = recipe
    r = run(f"./run.sh --stage 1 --stop_stage 1 --local_data_opts '--lang {LANG}'", rdir, env)
    assert r.returncode == 0 and "already prepared" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def test_columns_by_name_and_errors(tmp_path, capsys):
    from xytok.bin.commonvoice_data import main

    with pytest.raises(SystemExit) as e:
        main(["prepare", "--help"])
    assert e.value.code == 0 and "--train_tsv" in capsys.readouterr().out
    made = make_release(tmp_path / "rel", "de", DE, seed=3)
    rows = read_tsv(tmp_path / "rel/de/train.tsv")
    assert [r.clip for r in rows if r.text] and all(r.client_id.isalnum() and len(r.client_id) == 128 for r in rows)
    # older releases: sentence third, `accent`, no sentence_id: the same rows
    old = tmp_path / "old.tsv"
    with open(tmp_path / "rel/de/train.tsv", encoding="utf-8", newline="") as f:
        recs = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    with open(old, "w", encoding="utf-8") as f:
        cols = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accent", "locale", "segment"]
        f.write("\t".join(cols) + "\n")
        for rec in recs:
            rec["accent"] = ""
            f.write("\t".join(rec[c] for c in cols) + "\n")
    assert [(r.clip, r.text) for r in read_tsv(old)] == [(r.clip, r.text) for r in rows]
    # validated.tsv as train: dev/test clips and speakers taken out
    sizes = prepare(tmp_path / "rel", "de", tmp_path / "data", ("tr", "dv", "te"), train_tsv="validated")
    assert sizes == {"tr": len(made["kept"]["train"]), "dv": 2, "te": 2}
    # --check_audio: a clip that is not audio is dropped (counted), the others kept
    (tmp_path / "rel/de/clips" / made["kept"]["train"][0][1]).write_bytes(b"not an mp3 at all" * 40)
    sizes = prepare(tmp_path / "rel", "de", tmp_path / "data", ("tr", "dv", "te"), check_audio=True, nj=1)
    assert sizes["tr"] == len(made["kept"]["train"]) - 1
    # a header without `sentence`, a short row: errors that name the file
    bad = tmp_path / "bad.tsv"
    bad.write_text("client_id\tpath\ttext\nabc\tx.mp3\thello\n", encoding="utf-8")
    with pytest.raises(DataPrepError, match=r"bad.tsv: header lacks column\(s\) sentence"):
        read_tsv(bad)
    bad.write_text("client_id\tpath\tsentence\nabc\tx.mp3\n", encoding="utf-8")
    with pytest.raises(DataPrepError, match=r"bad.tsv:2: 2 tab-separated fields, the header has 3"):
        read_tsv(bad)
    with pytest.raises(DataPrepError, match="commonvoice.mozilla.org/datasets"):
        prepare(tmp_path / "rel", "fr", tmp_path / "data", ("a", "b", "c"))


def test_release_tarball_and_missing_release(tmp_path):
    rel = tmp_path / "build/cv-corpus-99.0-2030-01-01"
    made = make_release(rel, "de", DE, seed=1)
    archive = tmp_path / "cv-corpus-99.0-2030-01-01-de.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(rel, arcname="cv-corpus-99.0-2030-01-01")
    rdir = make_recipe(tmp_path, "commonvoice")
    env = {"COMMONVOICE": str(tmp_path / "cvdl")}  # does not exist yet: the archive is extracted there
    # no release and no archive: the message says where to get it and what to set
    r = run("./run.sh --stage 1 --stop_stage 1 --local_data_opts '--lang de'", rdir, env)
    assert r.returncode != 0
    assert "https://commonvoice.mozilla.org/datasets (account needed)" in r.stderr and "COMMONVOICE" in r.stderr
    r = run(f"./run.sh --stage 1 --stop_stage 1 --local_data_opts '--lang de --archive {tmp_path}/none.tar.gz'",
            rdir, env)
    assert r.returncode != 0 and "none.tar.gz: no such file" in r.stderr and "commonvoice.mozilla.org" in r.stderr
    # the tarball: extracted once, sets named after the language
    cmd = f"./run.sh --stage 1 --stop_stage 1 --local_data_opts '--lang de --archive {archive}'"
    r = run(cmd, rdir, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "cvdl/cv-corpus-99.0-2030-01-01/de/clips").is_dir()
    for split in ("train", "dev", "test"):
        text = read_kv(rdir / "data" / f"{split}_de" / "text")
        assert sorted(text.values()) == sorted(t for _, _, t in made["kept"][split])
        wavs = read_kv(rdir / "data" / f"{split}_de" / "wav.scp").values()
        assert all(Path(w).is_relative_to((tmp_path / "cvdl").resolve()) for w in wavs)
    # a clip added to the release's train.tsv is picked up by the next stage-1 run (the archive is
    # not extracted again); an unchanged release is not prepared again: test_rerun_skips_prepared_release
    lang_dir = tmp_path / "cvdl/cv-corpus-99.0-2030-01-01/de"
    _mp3(lang_dir / "clips/common_voice_de_5000.mp3", 1.0, 300, np.random.default_rng(9))
    with open(lang_dir / "train.tsv", "a", encoding="utf-8") as f:
        values = {h: "" for h in HEADER}
        values.update(client_id=_client("spk_new"), path="common_voice_de_5000.mp3", sentence="Neu hinzugefügt.")
        f.write("\t".join(values[h] for h in HEADER) + "\n")
    r = run(cmd, rdir, env)
    assert r.returncode == 0 and "already prepared" not in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert "already extracted" in r.stdout + r.stderr
    assert read_kv(rdir / "data/train_de/text")[f"{_client('spk_new')[:16]}-common_voice_de_5000"] == "Neu hinzugefügt."


# ---------------------------------------------------------------------------------------------
# Adapting to a new language: stage 5 from a released-format checkpoint, then stage 6.

def _tiny_released_checkpoint(out: Path) -> dict:
    """A "released" tiny codec: the debug fine-tune config's architecture, trained-looking weights
    (inited codebooks), written as our exports and packs are (config.yaml + model.ckpt)."""
    from xytok.codec import build_codec
    from xytok.pretrained import write_pretrained

    gp = yaml.safe_load((REPO / "egs/commonvoice/conf/finetune_stage1_debug.yaml").read_text())["generator_params"]
    torch.manual_seed(123)
    codec = build_codec({"generator_params": gp})
    with torch.no_grad():
        for q in codec.quantizer.quantizers:
            q.codebook.normal_()
            q.embed_avg.copy_(q.codebook)
            q.cluster_size.fill_(1.0)
            q.inited.fill_(True)
    state = {k: v.clone() for k, v in codec.state_dict().items()}
    write_pretrained(state, gp, out)
    return state


def _tiny_whisper(out: Path) -> None:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(7)  # multilingual layout (language tokens are the decoder's; the encoder is what we load)
    cfg = WhisperConfig(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                        decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128, num_mel_bins=80,
                        max_source_positions=1500, max_target_positions=32, vocab_size=128, pad_token_id=0,
                        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    WhisperForConditionalGeneration(cfg).save_pretrained(out)


def _tiny_qwen(out: Path, texts) -> None:
    """A tiny Qwen2 with a byte-level BPE tokenizer (Qwen's kind) trained on the language's text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(out)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    Qwen2ForCausalLM(cfg).save_pretrained(out)


def _codec_state(ckpt: Path) -> dict:
    from xytok.checkpoint import read_generator_state

    return read_generator_state(ckpt)


def _dist(a: dict, b: dict, prefix: str = "") -> float:
    keys = [k for k in a if k.startswith(prefix) and a[k].is_floating_point()]
    return math.sqrt(sum(float(((a[k].float() - b[k].float()) ** 2).sum()) for k in keys))


def test_adapt_released_model_to_new_language(recipe, tmp_path):
    rdir, _, _, env = recipe
    released, whisper, qwen = tmp_path / "released", tmp_path / "whisper", tmp_path / "qwen"
    ckpt_state = _tiny_released_checkpoint(released)
    _tiny_whisper(whisper)
    train_text = list(read_kv(rdir / "data" / SETS["train"] / "text").values())
    _tiny_qwen(qwen, train_text + ZH)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen)
    for t in train_text:  # the LLM's tokenizer encodes the language (no unknowns) with multi-byte pieces
        assert tok.decode(tok.encode(t, add_special_tokens=False)) == t
    pieces = [tok.decode([i]) for t in train_text for i in tok.encode(t, add_special_tokens=False)]
    assert any(ord(c) > 127 and c != "\ufffd" for p in pieces for c in p)

    args = (f"--init_param {released}/model.ckpt --whisper_init {whisper} --asr.lm.name_or_path {qwen} "
            "--max_steps 3 --log_interval 1 --valid_interval 3 --save_interval 3 --valid_at_start false "
            "--num_examples 1")
    r = run(f"./run.sh --stage 5 --stop_stage 6 {STAGE_ARGS} --local_data_opts '--lang {LANG}' "
            "--stage1_config conf/finetune_stage1_debug.yaml "
            f"--stage1_args '{args}' "
            "--stage2_args '--max_steps 2 --log_interval 1 --valid_interval 2 --save_interval 2 "
            "--disc_start_step 1 --log_examples 0'", rdir, env, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    exp = rdir / "exp/stage1_finetune_stage1_debug"
    log = (exp / "train.log").read_text()
    assert "--init_param: codec weights loaded (released format)" in log
    assert f"semantic_encoder differs from whisper_init {whisper}" in log  # whisper ran, the checkpoint won
    assert "semantic_ctc" not in r.stdout  # no stand-in pre-training on this path
    # the codec started from the checkpoint: the frozen tower is bit-equal, the trained parts moved a little
    tuned = _codec_state(exp / "export/model.ckpt")
    for k, v in ckpt_state.items():
        if k.startswith("semantic_encoder."):
            assert torch.equal(tuned[k], v), k
    from xytok.codec import build_codec

    torch.manual_seed(999)
    gp = yaml.safe_load((REPO / "egs/commonvoice/conf/finetune_stage1_debug.yaml").read_text())["generator_params"]
    fresh = build_codec({"generator_params": gp}).state_dict()
    for part in ("acoustic_encoder.", "pre_rvq_adapter.", "vocos."):
        assert _dist(tuned, ckpt_state, part) < 0.1 * _dist(fresh, ckpt_state, part), part
    # the ASR branch trained on the Chinese text through the LLM: finite losses every step
    rows = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    asr = [row["asr_loss"] for row in rows if "asr_loss" in row]
    assert len(asr) >= 3 and all(math.isfinite(x) and x > 0 for x in asr)
    refs = [line.split("REF: ", 1)[1] for line in (exp / "asr_examples.txt").read_text().splitlines() if "REF: " in line]
    assert refs and all(any(ord(c) > 127 for c in ref) for ref in refs)
    # stage 6 from the fine-tuned model: the semantic tower is still the released one
    s2 = rdir / "exp/stage2_train_stage2_debug/export/model.ckpt"
    assert s2.is_file()
    final = _codec_state(s2)
    assert all(torch.equal(final[k], v) for k, v in ckpt_state.items() if k.startswith("semantic_encoder."))


def test_init_param_from_a_stage2_checkpoint_loads_the_codec(tmp_path):
    """--init_param with a stage-2 training checkpoint ({'models': {'generator', 'discriminators'}}):
    the stage-1 run takes its whole codec (before, the stage-1 model found no weights and trained from
    its random init with only a warning)."""
    from xytok.codec import build_codec
    from xytok.train.stage1 import Stage1Task
    from xytok.train.trainer import load_config

    conf_path = REPO / "egs/commonvoice/conf/train_stage1_debug.yaml"
    config = load_config(str(conf_path), {"semantic_ctc_pretrain": None}, task_defaults=Stage1Task.default_config)
    task = Stage1Task(config, tmp_path)
    models = task.build_models()
    torch.manual_seed(5)
    source = build_codec({"generator_params": config["generator_params"]}).state_dict()
    task.init_from(models, {"models": {"generator": source, "discriminators": {"mpd.x": torch.zeros(1)}}, "step": 7})
    got = models["stage1"].codec.state_dict()
    assert all(torch.equal(got[k], v) for k, v in source.items())


def test_finetune_configs_have_the_architectures_they_load():
    """--init_param loads strictly: the paper-size fine-tune config must be the released
    architecture, the debug one the debug stage-1 architecture (whose exports it starts from)."""
    conf = REPO / "egs/commonvoice/conf"
    released = yaml.safe_load((REPO / "xytok/configs/xy_tokenizer.yaml").read_text())
    released = released.get("generator_params", released)
    gp = lambda name: yaml.safe_load((conf / name).read_text())["generator_params"]  # noqa: E731
    assert gp("finetune_stage1.yaml") == released
    assert gp("finetune_stage1_debug.yaml") == gp("train_stage1_debug.yaml")
    for name in ("finetune_stage1.yaml", "finetune_stage1_debug.yaml"):
        c = yaml.safe_load((conf / name).read_text())
        assert "semantic_ctc_pretrain" not in c and c["asr"]["lm"]["type"] == "hf" and "codec.semantic_encoder" in c["frozen"]
        assert c["optim"]["lr"] < yaml.safe_load((conf / name.replace("finetune", "train")).read_text())["optim"]["lr"]
