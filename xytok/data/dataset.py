"""Training/validation datasets over lazy manifests (a Kaldi data dir is converted and cached).

What the model sees, and what it is told about it:
* An item that carries a transcript (the ASR loss is on) is a WHOLE utterance, never cropped, so
  the text describes exactly the audio. Utterances longer than `data.max_utt_seconds` (the model's
  30-s window) are dropped, counted and logged; corpora with segment times can cut at them (Kaldi
  `segments`). A config asking for a crop together with the ASR loss is an error.
* Reconstruction-only training (stage 2, or stage 1 with `loss_weights.asr: 0`) may take a random
  crop of `crop_seconds`; its start is a multiple of 1280 samples drawn from (seed, epoch, item).
* Every item is cut to a multiple of 1280 samples (one 12.5 Hz code frame) so codes, mel frames
  (160 samples) and the decoder output line up exactly.
* Lengths for bucketing come from the manifest's metadata; audio is opened only to be trained on.
* The log-mel is computed by the task on the training device unless `data.use_feats` is true and
  the data dir has stage-3 features (feats.scp).
* Stage 2 with a decoder at another output rate R (24/32 kHz, `target_sample_rate`): the data dir
  holds audio at R (recipe stage 6 dumps dump/raw_<R>; its `fs` file states the rate of
  utt2num_samples). Each item is read at R (the target the mel/GAN losses compare with). The
  encoder's 16 kHz input is the same utterance of the 16 kHz dump when the dir has an
  `encoder_input` file naming that dump (the recipe writes it): exactly what `encode()` sees at
  inference, so training decodes the codes inference gives. Without it the input is derived from
  the target with xytok.audio.resample, the polyphase resampler of the 16 kHz dump (for 16 kHz
  sources upsampled to 24 kHz, that round trip changed 12% of the debug model's codes on egs/mini
  dev). Crops and lengths stay whole code frames at both rates (1280 input samples = R/12.5
  target samples). Upsampled audio (a dump below R, or 16 kHz content) is warned about;
  `data.min_bandwidth_hz` drops items without energy near the top band.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from xytok.data.manifest import DataError, Manifest, manifest_for
from xytok.data.sampler import BucketBatchSampler

log = logging.getLogger("xytok.data")

CODE_HOP = 1280   # samples per 12.5 Hz code frame
MEL_HOP = 160     # samples per 100 Hz mel frame
SAMPLE_RATE = 16000

__all__ = ["DataError", "SpeechTextDataset", "collate", "build_dataset", "build_dataloader",
           "uses_text", "check_data_config"]


def uses_text(config: Dict[str, Any]) -> bool:
    """True when training items carry transcripts: the data wants text and the ASR loss is on."""
    d = config.get("data") or {}
    asr_weight = float((config.get("loss_weights") or {}).get("asr", 0.0) or 0.0)
    return bool(d.get("require_text", True)) and asr_weight > 0


def _crop_samples(seconds: Optional[float]) -> Optional[int]:
    if not seconds:
        return None
    return max(CODE_HOP, int(round(float(seconds) * SAMPLE_RATE / CODE_HOP)) * CODE_HOP)


def check_data_config(config: Dict[str, Any]) -> None:
    """Reject configs whose items could not be what the losses assume (raises DataError)."""
    d = config.get("data") or {}
    if uses_text(config):
        for key in ("crop_seconds", "valid_crop_seconds"):
            if d.get(key):
                raise DataError(
                    f"data.{key}={d[key]} with the ASR loss on (loss_weights.asr > 0): a crop keeps part of "
                    f"the audio but the whole transcript, so the ASR branch would learn words that are not in "
                    f"its input. Set data.{key}: null (whole utterances; longer than data.max_utt_seconds are "
                    f"dropped), or train reconstruction only (loss_weights.asr: 0)")


class SpeechTextDataset(torch.utils.data.Dataset):
    """Items of a manifest (or of a Kaldi data dir through its cached manifest).

    `key` for __getitem__ is `index` or `(index, epoch)`; the epoch seeds the random crop.
    """

    def __init__(self, source: str, *, crop_seconds: Optional[float], min_seconds: float = 0.32,
                 max_utt_seconds: Optional[float] = 30.0, seed: int = 0, random_crop: bool = True,
                 max_utts: Optional[int] = None, require_text: bool = True, use_feats: bool = False,
                 build_manifest: bool = True, target_sample_rate: Optional[int] = None,
                 min_bandwidth_hz: Optional[float] = None, bandwidth_floor_db: float = -50.0):
        self.source = str(source)
        self.target_rate = int(target_sample_rate) if target_sample_rate and int(target_sample_rate) != SAMPLE_RATE \
            else None
        self.manifest = Manifest(manifest_for(source, build=build_manifest))
        meta = self.manifest.meta
        self.require_text = bool(require_text)
        if require_text and meta["num_with_text"] < meta["num_items"]:
            missing = meta["num_items"] - meta["num_with_text"]
            first = (meta.get("missing_text_examples") or ["?"])[0]
            raise DataError(f"{self.source}/text: missing transcript for utterance {first!r} ({missing} of "
                            f"{meta['num_items']} utterances have no or an empty transcript; the ASR loss needs one "
                            f"for each: fix the data dir or subset it)")
        self.crop = _crop_samples(crop_seconds)
        if self.crop and self.require_text:
            raise DataError(f"{self.source}: a crop of {crop_seconds} s with transcripts: the text would describe "
                            f"audio the model does not see (use whole utterances: crop_seconds=None)")
        self.use_feats = bool(use_feats)
        lengths = np.asarray(self.manifest.num_samples)
        if self.target_rate:
            if self.use_feats:
                raise DataError(f"{self.source}: data.use_feats with {self.target_rate} Hz targets: the 16 kHz encoder "
                                "input is resampled from the target audio, not read from 16 kHz features; set "
                                "data.use_feats: false")
            lengths = self._setup_target_rate(lengths)
        self._lengths16 = lengths  # 16 kHz samples per manifest row (what the sampler budgets)
        min_samples = max(CODE_HOP, int(float(min_seconds) * SAMPLE_RATE))
        keep = lengths >= min_samples
        n_short = int((~keep).sum())
        n_long = 0
        if max_utt_seconds and not self.crop:
            limit = int(float(max_utt_seconds) * SAMPLE_RATE)
            too_long = lengths > limit
            n_long = int((too_long & keep).sum())
            keep &= ~too_long
        if n_short:
            log.warning("%s: dropping %d utterance(s) shorter than %.2f s", self.source, n_short,
                        min_samples / SAMPLE_RATE)
        if n_long:
            log.warning("%s: dropping %d utterance(s) longer than max_utt_seconds=%.2f s (whole utterances are "
                        "used, so they would not fit the model's window; cut them at segment times to keep them)",
                        self.source, n_long, float(max_utt_seconds))
        self.num_dropped = {"too_short": n_short, "too_long": n_long}
        self.index = np.flatnonzero(keep).astype(np.int64)
        if max_utts:
            self.index = self.index[: int(max_utts)]
        if self.target_rate and min_bandwidth_hz:
            self._filter_bandwidth(float(min_bandwidth_hz), float(bandwidth_floor_db))
        if len(self.index) == 0:
            raise DataError(f"{self.source}: no usable utterances (of {len(lengths)}: {n_short} too short, "
                            f"{n_long} too long, {self.num_dropped.get('narrowband', 0)} narrow-band)")
        self.seed = int(seed)
        self.random_crop = bool(random_crop)
        if self.target_rate:
            self._warn_if_upsampled()

    # -- targets at another rate (stage 2, 24/32 kHz decoders) ------------------------------------
    def _setup_target_rate(self, lengths: np.ndarray) -> np.ndarray:
        """Rate bookkeeping for target_rate; returns the manifest lengths in 16 kHz samples (what
        the duration filters and the sampler use)."""
        r = self.target_rate
        if (r * CODE_HOP) % SAMPLE_RATE:
            raise DataError(f"{self.source}: target rate {r} Hz is not a whole number of samples per code frame "
                            f"({CODE_HOP} samples at {SAMPLE_RATE} Hz)")
        self.target_hop = r * CODE_HOP // SAMPLE_RATE  # target samples per code frame (1920 at 24 kHz)
        fs_file = Path(self.source) / "fs"
        self.dir_rate = int(fs_file.read_text().split()[0]) if fs_file.is_file() else SAMPLE_RATE
        self.encoder_input_dir, self.encoder_input = None, None
        link = Path(self.source) / "encoder_input"
        if link.is_file():
            from xytok.audio import read_wav_scp

            self.encoder_input_dir = link.read_text().strip()
            scp = Path(self.encoder_input_dir) / "wav.scp"
            if not scp.is_file():
                raise DataError(f"{link}: names {self.encoder_input_dir}, which has no wav.scp (the 16 kHz dump of "
                                "these utterances; paths are relative to the working directory)")
            self.encoder_input = read_wav_scp(str(scp))
        if self.dir_rate < r:
            log.warning("%s: audio dumped at %d Hz is upsampled to the %d Hz targets: they hold nothing above "
                        "%d Hz, so the decoder learns an empty top band (dump the corpus at its source rate or "
                        "at %d Hz)", self.source, self.dir_rate, r, self.dir_rate // 2, r)
        return (lengths.astype(np.int64) * SAMPLE_RATE) // self.dir_rate

    def _band_db(self, i: int, low_hz: float) -> float:
        from xytok.audio import band_energy_db

        return band_energy_db(self._load(self.raw_item(i)), self.target_rate, low_hz)

    def _warn_if_upsampled(self, probe: int = 8, low_hz: float = 9000.0, floor_db: float = -50.0) -> None:
        """Warn when the first items have no energy above 9 kHz: 16 kHz content at a higher rate (the
        polyphase resampler leaves <= -50 dB there; its transition band reaches ~8.5 kHz)."""
        n = min(probe, len(self.index))
        try:
            levels = [self._band_db(i, low_hz) for i in range(n)]
        except ValueError as e:  # unreadable audio: reported when the item is trained on
            log.debug("bandwidth probe skipped: %s", e)
            return
        empty = sum(db < floor_db for db in levels)
        if empty == n:
            log.warning("%s: the first %d items have < %g dB of their energy above %g Hz: 16 kHz (or lower) audio "
                        "at %d Hz? The %d Hz decoder would learn to leave the top band empty (use audio recorded "
                        "at >= %d Hz, or data.min_bandwidth_hz to keep only such items)", self.source, n, floor_db,
                        low_hz, self.target_rate, self.target_rate, self.target_rate)

    def _filter_bandwidth(self, min_hz: float, floor_db: float) -> None:
        """Keep items with more than floor_db of their energy at or above min_hz (MOSS-TTSD's choice of
        "true" high-rate audio); opens every item once, logs the count dropped."""
        from xytok.progress import ProgressLog

        if not 0 < min_hz < self.target_rate / 2:
            raise DataError(f"data.min_bandwidth_hz {min_hz} must be in (0, {self.target_rate // 2}) for "
                            f"{self.target_rate} Hz targets")
        keep = []
        progress = ProgressLog(len(self.index), "bandwidth-checked", logger=log).update
        for i in range(len(self.index)):
            try:
                keep.append(self._band_db(i, min_hz) > floor_db)
            except ValueError as e:
                raise DataError(f"{self.source}: utterance {self.raw_item(i)['id']!r}: {e}") from None
            progress(i + 1)
        keep = np.asarray(keep, dtype=bool)
        self.num_dropped["narrowband"] = int((~keep).sum())
        log.info("%s: data.min_bandwidth_hz %g: %d of %d items have <= %g dB of their energy above %g Hz "
                 "and are dropped", self.source, min_hz, self.num_dropped["narrowband"], len(keep), floor_db, min_hz)
        self.index = self.index[keep]

    def item_length(self, i: int) -> int:
        """16 kHz samples after crop/alignment: what the sampler budgets."""
        n = (int(self._lengths16[self.index[i]]) // CODE_HOP) * CODE_HOP
        return min(n, self.crop) if self.crop else n

    def lengths(self) -> np.ndarray:
        n = (self._lengths16[self.index] // CODE_HOP) * CODE_HOP
        return np.minimum(n, self.crop) if self.crop else n

    def groups(self) -> np.ndarray:
        """Tar shard of each item (-1 for plain files): the sampler keeps shards together."""
        return np.asarray(self.manifest.groups)[self.index]

    def __len__(self) -> int:
        return len(self.index)

    def raw_item(self, i: int) -> Dict[str, Any]:
        return self.manifest[int(self.index[i])]

    def _load(self, meta: Dict[str, Any]) -> np.ndarray:
        from xytok.audio import load_audio

        wav, _ = load_audio(meta["audio"], target_sr=self.target_rate or SAMPLE_RATE, utt=meta["id"])
        if "offset" in meta:  # a segment of a longer recording
            off = int(meta["offset"])
            wav = wav[off:off + int(meta["num_samples"])]
        return wav

    def __getitem__(self, key) -> Dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        meta = self.raw_item(index)
        utt = meta["id"]
        try:
            wav = self._load(meta)
        except ValueError as e:
            raise DataError(f"{self.source}: utterance {utt!r}: {e}") from None
        if self.target_rate:
            return self._target_item(index, epoch, meta, wav)
        usable = (len(wav) // CODE_HOP) * CODE_HOP
        if usable == 0:
            raise DataError(f"{self.source}: utterance {utt!r}: audio has {len(wav)} samples, "
                            f"shorter than one code frame ({CODE_HOP})")
        length = min(usable, self.crop) if self.crop else usable
        start = 0
        if self.crop and self.random_crop and usable > length:
            rng = np.random.default_rng([self.seed, int(epoch), int(self.index[index])])
            start = int(rng.integers(0, (usable - length) // CODE_HOP + 1)) * CODE_HOP
        text = meta.get("text") if self.require_text else None  # __init__ refuses text with a crop
        item = {"utt_id": utt, "wav": torch.from_numpy(wav[start:start + length].copy()),
                "text": text, "start": start + int(meta.get("offset", 0)), "num_samples": length}
        if self.use_feats and meta.get("feats"):
            import kaldiio

            try:
                feats = kaldiio.load_mat(meta["feats"])
            except Exception as e:
                raise DataError(f"{self.source}: utterance {utt!r}: cannot read features {meta['feats']}: {e}") from None
            f0, n_frames = start // MEL_HOP, length // MEL_HOP
            if feats.ndim != 2 or feats.shape[1] != 80 or feats.shape[0] < f0 + n_frames:
                raise DataError(f"{self.source}/feats.scp: utterance {utt!r}: features of shape "
                                f"{feats.shape} do not cover {len(wav)} samples (expected (>= {f0 + n_frames}, 80))")
            item["mel"] = torch.from_numpy(np.ascontiguousarray(feats[f0:f0 + n_frames].T, dtype=np.float32))
        return item

    def _target_item(self, index: int, epoch: int, meta: Dict[str, Any], target: np.ndarray) -> Dict[str, Any]:
        """An item whose audio is at target_rate: `target_wav` (R Hz) and `wav`, its 16 kHz encoder input
        (the whole utterance resampled, then cut at the same code frames as the target)."""
        from xytok.audio import resample

        utt, hop = meta["id"], self.target_hop
        if "offset" in meta:
            raise DataError(f"{self.source}: utterance {utt!r}: segments (offsets) are not supported with "
                            f"{self.target_rate} Hz targets; cut the audio when preparing the data dir")
        frames = len(target) // hop
        if frames == 0:
            raise DataError(f"{self.source}: utterance {utt!r}: audio has {len(target)} samples at "
                            f"{self.target_rate} Hz, shorter than one code frame ({hop})")
        if self.encoder_input is not None:  # the 16 kHz dump: what encode() sees at inference
            from xytok.audio import load_audio

            entry = self.encoder_input.get(utt)
            if entry is None:
                raise DataError(f"{self.source}: utterance {utt!r} is not in {self.encoder_input_dir}/wav.scp "
                                "(its 16 kHz encoder input)")
            try:
                wav16, _ = load_audio(entry, target_sr=SAMPLE_RATE, utt=utt)
            except ValueError as e:
                raise DataError(f"{self.encoder_input_dir}: utterance {utt!r}: {e}") from None
            frames = min(frames, len(wav16) // CODE_HOP)
            if frames == 0:
                raise DataError(f"{self.encoder_input_dir}: utterance {utt!r}: shorter than one code frame")
            wav16 = wav16[: frames * CODE_HOP]
        else:
            wav16 = resample(target[: frames * hop], self.target_rate, SAMPLE_RATE)  # frames * 1280 samples
        keep = min(frames, self.crop // CODE_HOP) if self.crop else frames
        first = 0
        if self.crop and self.random_crop and frames > keep:
            rng = np.random.default_rng([self.seed, int(epoch), int(self.index[index])])
            first = int(rng.integers(0, frames - keep + 1))
        return {"utt_id": utt,
                "wav": torch.from_numpy(wav16[first * CODE_HOP:(first + keep) * CODE_HOP].copy()),
                "target_wav": torch.from_numpy(target[first * hop:(first + keep) * hop].copy()),
                "text": None, "start": first * CODE_HOP, "num_samples": keep * CODE_HOP}


def collate(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    lengths = torch.tensor([len(it["wav"]) for it in items], dtype=torch.long)
    wav = torch.zeros(len(items), int(lengths.max()))
    for i, it in enumerate(items):
        wav[i, : len(it["wav"])] = it["wav"]
    batch = {"utt_ids": [it["utt_id"] for it in items], "wav": wav, "wav_lengths": lengths,
             "text": [it["text"] if it["text"] is not None else "" for it in items],
             "has_text": all(it["text"] is not None for it in items),
             "starts": [it["start"] for it in items]}
    if all("target_wav" in it for it in items):  # stage 2 at another output rate
        t_lengths = torch.tensor([len(it["target_wav"]) for it in items], dtype=torch.long)
        target = torch.zeros(len(items), int(t_lengths.max()))
        for i, it in enumerate(items):
            target[i, : len(it["target_wav"])] = it["target_wav"]
        batch["target_wav"], batch["target_lengths"] = target, t_lengths
    if all("mel" in it for it in items):
        mel_lengths = torch.tensor([it["mel"].shape[1] for it in items], dtype=torch.long)
        mel = torch.zeros(len(items), 80, int(mel_lengths.max()))
        for i, it in enumerate(items):
            mel[i, :, : it["mel"].shape[1]] = it["mel"]
        batch["mel"], batch["mel_lengths"] = mel, mel_lengths
    return batch


_DATASETS: Dict[Tuple[str, bool], SpeechTextDataset] = {}


def build_dataset(data_dir: str, config: Dict[str, Any], train: bool,
                  build_manifest: bool = True, target_sample_rate: Optional[int] = None) -> SpeechTextDataset:
    """Cached per (dir, train, target rate) so epochs don't re-open the manifest. `target_sample_rate`
    (stage 2, a decoder at another output rate): items carry `target_wav` at that rate (see the
    module docstring); data.min_bandwidth_hz / data.bandwidth_floor_db filter them."""
    key = (str(data_dir), train) if not target_sample_rate else (str(data_dir), train, int(target_sample_rate))
    if key not in _DATASETS:
        check_data_config(config)
        d = config["data"]
        _DATASETS[key] = SpeechTextDataset(
            data_dir,
            crop_seconds=d.get("crop_seconds") if train else d.get("valid_crop_seconds"),
            min_seconds=float(d.get("min_seconds", 0.32)),
            max_utt_seconds=d.get("max_utt_seconds", 30.0),
            seed=int(config.get("seed", 0)),
            random_crop=train,
            max_utts=None if train else d.get("valid_max_utts"),
            require_text=uses_text(config),
            use_feats=bool(d.get("use_feats", False)),
            build_manifest=build_manifest,
            target_sample_rate=target_sample_rate,
            min_bandwidth_hz=d.get("min_bandwidth_hz") if train else None,
            bandwidth_floor_db=float(d.get("bandwidth_floor_db", -50.0)),
        )
    return _DATASETS[key]


def build_sampler(dataset: SpeechTextDataset, config: Dict[str, Any], *, train: bool, epoch: int,
                  rank: int = 0, world_size: int = 1, skip_batches: int = 0) -> BucketBatchSampler:
    d = config["data"]
    return BucketBatchSampler(
        dataset.lengths(), int(d["max_frames"]), int(d["max_batch_size"]), shuffle=train,
        seed=int(config.get("seed", 0)), epoch=epoch, rank=rank, world_size=world_size,
        skip_batches=skip_batches, bucket_size=int(d.get("bucket_size", 100)),
        groups=dataset.groups() if train else None,
    )


def build_dataloader(task, data_dir: str, config: Dict[str, Any], *, train: bool, epoch: int,
                     rank: int = 0, world_size: int = 1, skip_batches: int = 0, build_manifest: bool = True):
    """Batches of this rank: the sampler runs in this process and hands whole batches to the
    workers, so each (rank, worker) reads a disjoint part of the epoch."""
    dataset = (task.build_dataset(data_dir, config, train) if hasattr(task, "build_dataset")
               else build_dataset(data_dir, config, train, build_manifest=build_manifest))
    sampler = build_sampler(dataset, config, train=train, epoch=epoch, rank=rank, world_size=world_size,
                            skip_batches=skip_batches)
    # A private generator: DataLoader draws its worker base seed from it, not from the global RNG,
    # so creating a loader (e.g. after resume) never shifts the training RNG stream.
    gen = torch.Generator().manual_seed(int(config.get("seed", 0)) * 1000003 + epoch)
    workers = int(config.get("num_workers", 0))
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                       num_workers=workers, generator=gen,
                                       persistent_workers=False, pin_memory=False)


def dump_batches(config: Dict[str, Any], out_path: str, num_batches: int, epoch: int = 0) -> int:
    """Write the first `num_batches` training batches of `epoch` (single process) as JSON lines, one
    per item: batch, utt_id, start and num_samples (the 16 kHz sample range of the source utterance
    the model trains on) and text (what the ASR branch gets; null when it gets none). Returns the
    number of items written. Reads the audio exactly as training does; builds no model."""
    import json

    check_data_config(config)
    dataset = build_dataset(config["data"]["train"], config, train=True)
    sampler = build_sampler(dataset, config, train=True, epoch=epoch)
    n = 0
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        for b, batch in enumerate(sampler):
            if b >= num_batches:
                break
            for key in batch:
                it = dataset[key]
                f.write(json.dumps({"batch": b, "utt_id": it["utt_id"], "start": it["start"],
                                    "num_samples": it["num_samples"], "text": it["text"]},
                                   ensure_ascii=False) + "\n")
                n += 1
    log.info("wrote %d items of %d batches to %s", n, min(num_batches, len(sampler)), out_path)
    return n
