"""Text-alignment probe (paper protocol, after SUPERB's ASR probing):

frozen codec -> continuous quantised embeddings z_q (quantizer output, 12.5 Hz) -> repeated 4x to
50 Hz -> 2-layer BiLSTM -> character CTC, trained on a training set; greedy CTC decoding; WER/CER on
a validation set. A lower WER means the tokens carry more text (semantic) information.

Languages: the character vocabulary is built from the normalised training transcripts of the
language probed (ProbeConfig.language; normaliser basic_english for English, basic_multilingual
otherwise), so Mandarin characters are in it. Characters seen fewer than `vocab_min_count` times
share one unknown symbol (UNK); validation characters outside the vocabulary are counted (the probe
cannot emit them: they are errors). For languages written without spaces (xytok.eval.wer.CER_LANGUAGES)
the CTC targets carry no spaces next to Han/kana characters and CER is the primary metric.

Features are cached on disk as float16 shards (xytok.eval.probe_features; at 12.5 Hz, the repetition
happens when batches are made), keyed by a fingerprint of the model and the data, so re-runs only
train the probe; a killed extraction resumes. Training streams them through a bounded shuffle
buffer and takes the normalisation statistics in one streaming pass, so memory does not grow with
the training set (train-clean-100: ~4.5 M frames x 3072 dims); the BiLSTM runs on ProbeConfig.device.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xytok.checkpoint import atomic_write
from xytok.eval.normalizer import get_normalizer, join_split_chars
from xytok.eval.probe_features import (DEFAULT_SHARD_MB, STORE_FORMAT, BatchStream, FeatureStore, ShardWriter,
                                       as_feature_source, count_batches, pad_batch, plan_epoch, read_meta,
                                       streaming_stats)
from xytok.eval.wer import corpus_error_counts, resolve_asr_metric
from xytok.progress import ProgressLog

log = logging.getLogger("xytok.probe")
UPSAMPLE = 4  # 12.5 Hz -> 50 Hz by frame repetition
SAMPLE_RATE = 16000
CHUNK_SAMPLES = 30 * SAMPLE_RATE  # the codec sees at most one 30 s window at a time


# ----------------------------------------------------------------------------- model resolution
def resolve_model(model: str | None = None, config: str | None = None, checkpoint: str | None = None,
                  random_init: bool = False) -> tuple[str, str | None]:
    """(config.yaml, model.ckpt or None). `model` = exp dir (export/ inside), export dir or config.yaml."""
    if model:
        p = Path(model)
        if p.is_dir():
            p = p / "export" / "config.yaml" if (p / "export" / "config.yaml").is_file() else p / "config.yaml"
        if not p.is_file():
            raise FileNotFoundError(f"--model {model}: no export/config.yaml or config.yaml found")
        config = str(p)
        if checkpoint is None and not random_init:
            checkpoint = str(p.parent / "model.ckpt")
    if not config:
        raise ValueError("give --model, or --config (and --checkpoint unless --random_init)")
    if random_init:
        return config, None
    if checkpoint is None or not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} not found (use --random_init for an untrained codec)")
    return config, checkpoint


def model_fingerprint(config: str, checkpoint: str | None) -> str:
    h = hashlib.sha1(Path(config).read_bytes())
    if checkpoint:
        st = os.stat(checkpoint)
        h.update(f"{os.path.abspath(checkpoint)}:{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        h.update(b"random_init")
    h.update(FEATURE_VERSION.encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- feature extraction
def _tokenize_windows(codec, wav: np.ndarray, device: str, first_only: bool = False):
    """codec.tokenize output and its code-frame count per 30 s window of one utterance (windows
    shorter than one 80 ms code frame contribute nothing and are skipped)."""
    starts = [0] if first_only else range(0, len(wav), CHUNK_SAMPLES)
    for start in starts:
        chunk = torch.as_tensor(wav[start:start + CHUNK_SAMPLES], dtype=torch.float32, device=device)
        if len(chunk) < 1280:
            continue
        mel, mel_lengths = codec.wav_to_mel(chunk.unsqueeze(0), torch.tensor([len(chunk)], device=device))
        out = codec.tokenize(mel, mel_lengths)
        yield out, int(out["codes_lengths"][0])


# Look-ahead of the codec's own windowing (XYTokenizer.encode's default, as inference tokenizes).
FEATURE_OVERLAP_SECONDS = 10.0
# Part of the feature-cache key: features cached by an older extraction are recomputed.
FEATURE_VERSION = f"encode-windows-overlap{FEATURE_OVERLAP_SECONDS:g}s+decode_codes"


@torch.inference_mode()
def extract_zq(codec, wav: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Quantizer output z_q (T, C) at 12.5 Hz for one utterance, T = floor(samples / 1280).

    The codes come from the codec's own `encode` windowing (30-s windows, each keeping its first
    20 s of codes and using the next FEATURE_OVERLAP_SECONDS as look-ahead), so an utterance over
    30 s gets the features inference would give it, not those of plain 30-s cuts; z_q is then the
    eval quantizer output for those codes (`decode_codes`: sum of the chosen codewords, projected).
    ValueError (too short, NaN/Inf) for an utterance that cannot be featurised."""
    x = torch.as_tensor(np.asarray(wav, dtype=np.float32))
    try:
        codes = codec.encode([x], overlap_seconds=FEATURE_OVERLAP_SECONDS)[0]
    except ValueError as e:
        raise ValueError(str(e).removeprefix("item 0: ")) from e
    zq = codec.decode_codes(codes.unsqueeze(1).to(codec.device))  # (1, C, T)
    return zq[0].transpose(0, 1).float().cpu().numpy()


@torch.no_grad()
def kmeans_init_codebooks(codec, data_dir: str, max_frames: int = 5000, device: str = "cpu") -> int:
    """Untrained codec: k-means-initialise its RVQ codebooks on the pre-quantizer frames of training
    utterances (sorted ids, first 30 s of each, up to max_frames 12.5 Hz frames), as training step 0
    does, so the control is a random network with working codebooks. Returns the frames used."""
    from xytok.eval.inputs import load_wav, read_scp

    wavs = read_scp(Path(data_dir) / "wav.scp")
    frames, n = [], 0
    for utt in sorted(wavs):
        for out, t in _tokenize_windows(codec, load_wav(wavs[utt])[0], device, first_only=True):
            frames.append(out["downsample_output"][:, :, :t])
            n += t
        if n >= max_frames:
            break
    if not frames:
        raise ValueError(f"{data_dir}: no utterance long enough to initialise the codebooks")
    codec.quantizer.init_codebooks(torch.cat(frames, dim=2))
    return n


def upsample_factor(frame_rate: float) -> int:
    """Frame repetition that brings a codec's frames to ~50 Hz (4 for 12.5 Hz; 1 for >= 50 Hz)."""
    return max(1, int(round(50.0 / frame_rate)))


def extract_zq_batch(codec, wavs, num_quantizers: int | None = None,
                     overlap_seconds: float = FEATURE_OVERLAP_SECONDS) -> list[np.ndarray]:
    """``extract_zq`` of several utterances with one ``codec.encode`` call over the list (its 30-s
    windows batched across utterances, at most one window per utterance per model call); the
    codes, hence z_q, are those of one-at-a-time extraction (tested). ``num_quantizers``: z_q of
    the first n RVQ layers (the xy family's --num_quantizers). ValueError if any item cannot be
    featurised (the caller then goes one by one to name it)."""
    xs = [torch.as_tensor(np.asarray(w, dtype=np.float32)) for w in wavs]
    with torch.inference_mode():
        codes = codec.encode(xs, overlap_seconds=overlap_seconds, batch_size=len(xs),
                             max_batch_seconds=30.0 * len(xs))
        out = []
        for c in codes:
            c = c[:num_quantizers] if num_quantizers else c
            zq = codec.decode_codes(c.unsqueeze(1).to(codec.device))  # (1, C, T)
            out.append(zq[0].transpose(0, 1).float().cpu().numpy())
    return out


def _featurise(codec, utts, wavs: dict, device: str):
    """(utt, (T, C) float32 features) or (utt, reason it could not be featurised) per utterance:
    several utterances per codec call where the codec batches (an XYTokenizer, the xy family),
    one at a time otherwise (the other families' embed: padding would change their outputs)."""
    from xytok.eval.inputs import load_wav

    family = hasattr(codec, "embed")  # xytok.codecs interface: audio at the codec's rate
    loaded = []
    for u in utts:
        try:
            loaded.append((u, load_wav(wavs[u], target_sr=codec.sample_rate if family else SAMPLE_RATE)[0]
                           .astype(np.float32)))
        except ValueError as e:
            yield u, str(e)
    if family and getattr(codec, "family", "") == "xy" and hasattr(codec, "codec"):
        batched = dict(tok=codec.codec, num_quantizers=codec.num_quantizers, overlap_seconds=codec.overlap_seconds)
    elif not family:
        batched = dict(tok=codec, num_quantizers=None, overlap_seconds=FEATURE_OVERLAP_SECONDS)
    else:
        batched = None
    if batched and len(loaded) > 1:
        try:
            feats = extract_zq_batch(batched["tok"], [w for _, w in loaded], batched["num_quantizers"],
                                     batched["overlap_seconds"])
        except ValueError:
            feats = None  # one of them cannot be featurised: one by one below names it
        if feats is not None:
            yield from ((u, f) for (u, _), f in zip(loaded, feats))
            return
    for u, w in loaded:
        try:
            yield u, (codec.embed(w) if family else extract_zq(codec, w, device))
        except ValueError as e:
            yield u, str(e)


def _feature_cache_key(data_dir: str, fingerprint: str, utts) -> dict:
    return {"model": fingerprint, "data_dir": os.path.abspath(data_dir),
            "utts": hashlib.sha1("\n".join(sorted(utts)).encode()).hexdigest(), "format": STORE_FORMAT}


def cached_features(data_dir: str, feat_dir: Path, name: str, fingerprint: str) -> str | None:
    """The store feat_dir/name if it holds finished features of this model and data, else None."""
    from xytok.eval.inputs import read_scp

    key = _feature_cache_key(data_dir, fingerprint, read_scp(Path(data_dir) / "wav.scp"))
    meta = read_meta(Path(feat_dir) / f"{name}.meta.json")
    ok = {k: meta.get(k) for k in key} == key and (Path(feat_dir) / name / "index.tsv").is_file()
    return str(Path(feat_dir) / name) if ok else None


def cache_features(codec, data_dir: str, feat_dir: Path, name: str, fingerprint: str, device: str = "cpu",
                   batch_size: int = 8, shard_mb: float = DEFAULT_SHARD_MB) -> str:
    """Features of every utterance of a Kaldi data dir into the float16 store feat_dir/name/ (+
    feat_dir/name.meta.json); returns its path. A finished store of the same model and data is
    reused; a killed build continues after its last complete shard; an older cache (float32 Kaldi
    ark, another model) is replaced, with one log line saying so.

    ``codec``: an XYTokenizer, or any xytok.codecs.Codec (its ``embed`` at its own sample rate);
    ``batch_size`` utterances per codec call where the codec batches (see ``_featurise``)."""
    from xytok.eval.inputs import read_scp

    feat_dir = Path(feat_dir)
    wavs = read_scp(Path(data_dir) / "wav.scp")
    store, meta_path = feat_dir / name, feat_dir / f"{name}.meta.json"
    if cached_features(data_dir, feat_dir, name, fingerprint):
        log.info("%s: using cached features %s", name, store)
        return str(store)
    key = _feature_cache_key(data_dir, fingerprint, wavs)
    old = read_meta(meta_path)
    if old.get("format") != STORE_FORMAT and (old or (feat_dir / f"{name}.ark").exists()):
        log.info("%s: feature cache %s.{ark,scp} is in the old float32 Kaldi format: removed, rebuilding as "
                 "float16 shards in %s", name, feat_dir / name, store)
        for suffix in (".ark", ".scp"):
            (feat_dir / f"{name}{suffix}").unlink(missing_ok=True)
    elif old:
        log.info("%s: cached features are of another model or data: rebuilding %s", name, store)
    meta_path.unlink(missing_ok=True)  # a store without its meta is unfinished
    writer = ShardWriter(store, key, shard_mb)
    todo = [u for u in sorted(wavs) if u not in writer.done]
    if writer.resumed:
        log.info("%s: resuming the feature build in %s: %d of %d utterances done (%d shards)", name, store,
                 len(wavs) - len(todo), len(wavs), writer.n_shards)
    prog, frames = ProgressLog(len(todo), f"{name}: features", logger=log), 0
    for b0 in range(0, len(todo), max(1, batch_size)):
        for utt, feats in _featurise(codec, todo[b0:b0 + max(1, batch_size)], wavs, device):
            try:
                if isinstance(feats, str):
                    raise ValueError(feats)
                writer.add(utt, feats)
                frames += len(feats)
            except ValueError as e:
                writer.skip(utt, str(e))
                log.warning("%s: %s: skipped (%s)", name, utt, e)
        prog.update(min(b0 + max(1, batch_size), len(todo)), f", {frames} frames")
    info = writer.finish()
    skipped = writer.skipped
    if skipped:
        log.warning("%s: %d of %d utterances could not be featurised (counted as errors when scored)",
                    name, len(skipped), len(wavs))
    log.info("%s: %d utterances, %d frames x %s dims in %d float16 shards (%.2f GB) at %s", name, info["n_utts"],
             info["n_frames"], info["dim"], info["n_shards"], info["n_frames"] * (info["dim"] or 0) * 2 / 1e9, store)
    meta = {**key, **info, "shard_mb": shard_mb, "unfeaturised": skipped}
    atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta)))
    return str(store)


def open_features(path: str | os.PathLike) -> FeatureStore:
    """The float16 feature store written by ``cache_features`` (read lazily, shard by shard)."""
    return FeatureStore(path)


def unfeaturised(store: str | os.PathLike) -> dict:
    """{utt: reason} of the utterances `cache_features` could not featurise into the store
    FEAT_DIR/NAME (read from FEAT_DIR/NAME.meta.json)."""
    meta = Path(store).with_suffix(".meta.json")
    return json.loads(meta.read_text()).get("unfeaturised", {}) if meta.is_file() else {}


# ----------------------------------------------------------------------------- probe model
UNK = "\u2047"  # ⁇: the probe's unknown-character symbol (punctuation: no normaliser lets it through)


class CharVocab:
    """CTC blank = 0; characters of the normalised training transcripts (space = word boundary).

    min_count > 1: characters seen fewer times share the symbol UNK (last index, present only when
    some character is that rare); `encode` maps characters outside the vocabulary to UNK when it
    exists, else drops them."""

    def __init__(self, texts, min_count: int = 1):
        counts = Counter(c for t in texts for c in t)
        kept = sorted(c for c, n in counts.items() if n >= min_count)
        self.rare = {c: n for c, n in counts.items() if n < min_count}
        self.chars = kept + ([UNK] if self.rare else [])
        self.index = {c: i + 1 for i, c in enumerate(self.chars)}
        self.unk_id = self.index.get(UNK) if self.rare else None

    def __len__(self):
        return len(self.chars) + 1

    def __contains__(self, ch: str) -> bool:
        return ch in self.index and ch != UNK

    def encode(self, text: str) -> list[int]:
        if self.unk_id is None:
            return [self.index[c] for c in text if c in self.index]
        return [self.index[c] if c in self else self.unk_id for c in text]

    def greedy_decode(self, ids) -> str:
        from xytok.asr.ctc import ctc_collapse

        return " ".join("".join(self.chars[i - 1] for i in ctc_collapse(ids)).split())


class BiLSTMCTC(nn.Module):
    def __init__(self, input_dim: int, hidden: int, vocab_size: int, num_layers: int = 2, dropout: float = 0.1):
        super().__init__()
        self.lstm = nn.LSTM(input_dim, hidden, num_layers=num_layers, bidirectional=True, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.out = nn.Linear(2 * hidden, vocab_size)

    def forward(self, x, lengths):
        """(B, T, C) padded input, lengths (B,) -> (B, T, vocab) log-probs (frames past an item's
        length are padding: ignore them)."""
        if x.device.type == "cpu":
            return self.out(self._lstm_padded(x, lengths)).log_softmax(-1)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=x.shape[1])
        return self.out(h).log_softmax(-1)

    def _lstm_padded(self, x, lengths):
        """self.lstm's packed result on padded tensors, layer by layer with its own weights: the
        forward direction runs over the padded batch (padding comes after an item's frames), the
        backward one over each item reversed within its length. On CPU, torch's backward through
        a packed LSTM is ~60x slower than through a padded one (221 s vs a few s per paper-size step)."""
        t = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        n = lengths.to(x.device).unsqueeze(1)
        rev = torch.where(t < n, n - 1 - t, t)  # an involution: reversing twice restores the order
        lstm, h = self.lstm, x
        for layer in range(lstm.num_layers):
            outs = []
            for sfx in ("", "_reverse"):
                w = [getattr(lstm, f"{k}_l{layer}{sfx}") for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                inp = h if not sfx else h.gather(1, rev.unsqueeze(-1).expand_as(h))
                zeros = inp.new_zeros(1, inp.shape[0], lstm.hidden_size)
                out = torch._VF.lstm(inp, (zeros, zeros), w, True, 1, 0.0, self.training, False, True)[0]
                outs.append(out if not sfx else out.gather(1, rev.unsqueeze(-1).expand_as(out)))
            h = torch.cat(outs, dim=-1)
            if layer < lstm.num_layers - 1 and lstm.dropout > 0:
                h = nn.functional.dropout(h, lstm.dropout, self.training)
        return h


@dataclass
class ProbeConfig:
    hidden: int = 256
    num_layers: int = 2
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    dropout: float = 0.1
    seed: int = 0
    # language of the transcripts (ISO code): picks the normaliser ("auto") and the primary metric
    language: str = "en"
    normalizer: str = "auto"  # auto: basic_english for en, basic_multilingual otherwise
    vocab_min_count: int = 1  # training characters seen fewer times map to UNK (1: none)
    # LR schedule: linear warm-up over the first `warmup` fraction of the steps, then `schedule`
    # ("cosine" decay to lr_min_ratio * lr, or "constant"). Warm-up lets a higher peak lr be used
    # without the early CTC blow-ups; decay makes the last epochs settle.
    warmup: float = 0.0
    schedule: str = "constant"
    lr_min_ratio: float = 0.05
    grad_clip: float = 5.0
    weight_decay: float = 0.0
    # Keep every `subsample`-th frame of the 50 Hz (repeated) sequence before the LSTM: 1 = the
    # paper's 50 Hz; 2 = 25 Hz, half the LSTM cost (CTC still has >= 2 frames per character).
    subsample: int = 1
    # Probability of zeroing whole input frames while training (regularises small train sets).
    frame_dropout: float = 0.0
    # Frame repetition before the LSTM (codec frames -> ~50 Hz): 4 for 12.5 Hz codecs (the paper),
    # 1 for codecs at >= 50 Hz (upsample_factor).
    upsample: int = UPSAMPLE
    # Where the BiLSTM trains ("cpu", "cuda", "cuda:1"; float32 either way).
    device: str = "cpu"
    # Training features stream through a shuffle buffer of at most this many (codec-rate) frames
    # (0 = unbounded): memory held = buffer + one shard, whatever the training set's size.
    # 100000 frames = 2.2 h of 12.5 Hz audio, 0.6 GB of float16 at 3072 dims (on CPU a paper-size
    # training step itself takes up to ~2.7 GB: batch 16 of 35-s utterances at 50 Hz).
    shuffle_buffer_frames: int = 100_000
    # Stop after this many optimiser steps (0 = all epochs): smoke runs and benchmarks.
    max_steps: int = 0


def resolve_device(device: str) -> torch.device:
    """torch.device for the probe; a clear error when CUDA is asked for and absent."""
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available (torch {torch.__version__}, CUDA build "
                         f"{torch.version.cuda or 'none'}, {torch.cuda.device_count()} GPUs visible); use --device cpu")
    return d


def _batch_tensors(batch, mean, std, subsample: int, upsample: int, device):
    """[(utt, (T_i, C))] -> standardised, repeated x upsample, every subsample-th frame kept:
    (B, T', C) float32 on `device` and LSTM lengths (B,) (CPU). Float16 features cross to the
    device as float16 and become float32 there. Padded frames are masked by the packed LSTM."""
    padded, lengths = pad_batch(batch)
    x = torch.from_numpy(padded).to(device, non_blocking=True).float()
    x = x.sub_(mean).div_(std).repeat_interleave(upsample, dim=1)[:, ::subsample]  # in place: one copy less
    return x, torch.from_numpy((lengths * upsample + subsample - 1) // subsample)


def lr_factor(schedule: str, warmup: float, min_ratio: float, total_steps: int):
    """LambdaLR factor: linear warm-up over `warmup` x total_steps, then constant or cosine to min_ratio."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown probe lr schedule {schedule!r} (constant | cosine)")
    n_warm = int(round(warmup * total_steps))

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        if schedule == "constant":
            return 1.0
        t = min(1.0, (step - n_warm) / max(1, total_steps - n_warm))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def train_and_evaluate(train_items, valid_items, train_text: dict, valid_text: dict, cfg: ProbeConfig,
                       valid_unfeaturised: dict | None = None) -> dict:
    """items: list of (utt, feats (T, C) at the codec's frame rate), or a FeatureStore (features on
    disk, streamed: see xytok.eval.probe_features). Returns metrics and the valid hypotheses.

    `valid_unfeaturised` ({utt: reason}, see `unfeaturised`): validation utterances without
    features stay in the WER/CER denominator with an empty hypothesis (all their words deleted),
    so a codec that fails on some inputs is not scored on the easy rest only."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    norm = get_normalizer(cfg.normalizer, language=cfg.language)
    metric = resolve_asr_metric("auto", cfg.language)
    # CER languages: no spaces between Han/kana characters in the targets (nothing to learn there)
    target_text = (lambda u: join_split_chars(norm(train_text[u]))) if metric == "cer" else (
        lambda u: norm(train_text[u]))
    train_src, valid_src = as_feature_source(train_items), as_feature_source(valid_items)
    # (utt, frames) pairs: the features stay where they are (on disk for a FeatureStore)
    train_items = [(u, n) for u, n in train_src.lengths.items() if u in train_text]
    vocab = CharVocab((target_text(u) for u, _ in train_items), cfg.vocab_min_count)
    targets = {u: vocab.encode(target_text(u)) for u, _ in train_items}
    # CTC needs T >= len(target) (+ repeats); drop impossible utterances, counted.
    if cfg.upsample < 1 or cfg.upsample % cfg.subsample:
        raise ValueError(f"subsample must divide the x{cfg.upsample} repetition, got {cfg.subsample}")
    frames = cfg.upsample // cfg.subsample  # LSTM frames per code frame
    usable = [(u, n) for u, n in train_items if n * frames >= len(targets[u]) and targets[u]]
    if not usable:
        raise ValueError("no usable training utterances (need text and frames >= characters)")
    device = resolve_device(cfg.device)
    usable_ids = [u for u, _ in usable]
    start = time.time()
    mean, std, n_train_frames = streaming_stats(train_src, usable_ids)
    stats_seconds = time.time() - start
    log.info("probe: per-dimension mean/std over %d train frames of %d utterances (one streaming pass, "
             "float64 accumulators, %.0f s)", n_train_frames, len(usable), stats_seconds)
    # per-dimension standardisation from the train set
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device)
    std_t = torch.as_tensor(std + 1e-5, dtype=torch.float32, device=device)

    model = BiLSTMCTC(train_src.dim, cfg.hidden, len(vocab), cfg.num_layers, cfg.dropout).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Every epoch's batches are planned from the lengths alone (no feature read), so the LR schedule
    # knows its steps; the read order of the shards has its own RNG, so a set that fits the buffer
    # gets the same batches whatever its shards.
    capacity = cfg.shuffle_buffer_frames or None
    plans = [plan_epoch(train_src, usable_ids, cfg.batch_size, capacity, rng,
                        random.Random(f"probe-read-order-{cfg.seed}-{e}")) for e in range(1, cfg.epochs + 1)]
    steps = [count_batches(p) for p in plans]
    total_steps = min(sum(steps), cfg.max_steps) if cfg.max_steps > 0 else sum(steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_factor(cfg.schedule, cfg.warmup, cfg.lr_min_ratio, total_steps))
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)
    history, start, peak_held, done_steps, done_frames = [], time.time(), 0, 0, 0
    log.info("probe: BiLSTM on %s (float32), %d steps/epoch, shuffle buffer %s frames", device, steps[0],
             capacity or "unbounded")
    for epoch, plan in enumerate(plans, 1):
        model.train()
        total, n, n_frames, t_epoch = 0.0, 0, 0, time.time()
        stream = BatchStream(train_src, plan)
        prog = ProgressLog(steps[epoch - 1], f"probe epoch {epoch}/{cfg.epochs}", unit="steps", logger=log)
        for step, batch in enumerate(stream, 1):
            x, lengths = _batch_tensors(batch, mean_t, std_t, cfg.subsample, cfg.upsample, device)
            if cfg.frame_dropout > 0:
                x = x * (torch.rand(x.shape[:2]) >= cfg.frame_dropout).to(device).unsqueeze(-1)
            tg = [torch.tensor(targets[u]) for u, _ in batch]
            logp = model(x, lengths)
            loss = ctc(logp.transpose(0, 1), torch.cat(tg).to(device), lengths, torch.tensor([len(t) for t in tg]))
            opt.zero_grad()
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            total += loss.item() * len(batch)
            n += len(batch)
            n_frames += sum(len(f) for _, f in batch)
            prog.update(step, f", loss {total / n:.4f}, {n_frames / max(time.time() - t_epoch, 1e-6):.0f} frames/s")
            done_steps += 1
            if done_steps == total_steps:
                break
        peak_held = max(peak_held, stream.peak_held_frames)
        done_frames += n_frames
        history.append(total / n)
        el = time.time() - start
        log.info("probe epoch %d/%d: train CTC loss %.4f (%.1f s/epoch, ETA %.0f s)", epoch, cfg.epochs,
                 total / n, el / epoch, el / epoch * (cfg.epochs - epoch))
        if done_steps == total_steps:
            break
    train_seconds = time.time() - start

    model.eval()
    hyps = {}
    with torch.inference_mode():
        for batch in BatchStream(valid_src, plan_epoch(valid_src, list(valid_src.lengths), cfg.batch_size,
                                                       capacity, None)):
            x, lengths = _batch_tensors(batch, mean_t, std_t, cfg.subsample, cfg.upsample, device)
            best = model(x, lengths).argmax(-1).cpu()
            for j, (u, _) in enumerate(batch):
                hyps[u] = vocab.greedy_decode(best[j, : lengths[j]].tolist())
    refs = {u: valid_text[u] for u in valid_src.lengths if u in valid_text}
    missing = {u: why for u, why in (valid_unfeaturised or {}).items() if u in valid_text and u not in refs}
    refs.update({u: valid_text[u] for u in missing})  # no hypothesis -> all deletions
    wer = corpus_error_counts(refs, hyps, norm)
    cer = corpus_error_counts(refs, hyps, norm, unit="char")
    # validation characters the probe cannot emit (not in the training text's vocabulary)
    valid_chars = Counter(c for u in refs for c in norm(refs[u]).replace(" ", ""))
    oov = {c: n for c, n in valid_chars.items() if c not in vocab}
    return {
        "wer": wer.rate, "cer": cer.rate,
        "metric": metric, "language": cfg.language, "normalizer_name": norm.name,
        "vocab_size": len(vocab.chars), "vocab_min_count": cfg.vocab_min_count,
        "vocab_unk": UNK if vocab.unk_id is not None else None,
        "n_train_chars_as_unk": sum(vocab.rare.values()),
        "valid_ref_chars": sum(valid_chars.values()), "valid_oov_chars": sum(oov.values()),
        "valid_oov_examples": sorted(oov, key=lambda c: (-oov[c], c))[:20],
        "wer_counts": {**wer.to_dict(), "kaldi": wer.kaldi_line("WER")},
        "cer_counts": {**cer.to_dict(), "kaldi": cer.kaldi_line("CER")},
        "n_train": len(usable), "n_train_dropped": len(train_items) - len(usable), "n_valid": len(refs),
        "n_valid_unfeaturised": len(missing), "valid_unfeaturised": missing,
        "input_dim": int(train_src.dim), "vocab": vocab.chars, "train_loss": history,
        "n_train_frames": n_train_frames, "device": str(device), "peak_buffered_frames": peak_held,
        "train_steps": done_steps, "train_frames_seen": done_frames, "stats_seconds": stats_seconds,
        "probe_config": asdict(cfg), "normalizer": norm.description,
        "n_params": sum(p.numel() for p in model.parameters()),
        "train_seconds": train_seconds,
        "hyps": hyps,
    }


def load_items(path: str | os.PathLike) -> list:
    """Every (utt, float32 frames) of a feature store, in memory (small sets and tests; training
    streams the store instead)."""
    return [(u, f.astype(np.float32)) for u, f in open_features(path).items()]


__all__ = ["resolve_model", "model_fingerprint", "upsample_factor", "extract_zq", "extract_zq_batch",
           "kmeans_init_codebooks", "cache_features", "cached_features", "open_features", "unfeaturised",
           "CharVocab", "BiLSTMCTC", "ProbeConfig", "resolve_device", "train_and_evaluate", "load_items", "UPSAMPLE"]
