"""Training/validation datasets over recipe data dirs (Kaldi format).

A data dir needs wav.scp (the reconstruction target) and text (the ASR target); feats.scp
(kaldiio, (frames, 80) log-mel from recipe stage 3) is used for the model input when present,
otherwise the task computes the log-mel from the waveform; utt2num_samples (stage 2) gives lengths
for bucketing without opening the audio.

Every item is cut to a multiple of 1280 samples (one 12.5 Hz code frame) so codes, mel frames
(160 samples) and the decoder output line up exactly. Long training utterances get a random crop
of `crop_seconds`, whose start is also a multiple of 1280 and is drawn from (seed, epoch, item).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from xytok.data.sampler import BucketBatchSampler

log = logging.getLogger("xytok.data")

CODE_HOP = 1280   # samples per 12.5 Hz code frame
MEL_HOP = 160     # samples per 100 Hz mel frame
SAMPLE_RATE = 16000


class DataError(ValueError):
    """A problem with the data dir, naming the file and/or utterance."""


def read_kaldi_map(path: Path, allow_empty_value: bool = False) -> Dict[str, str]:
    out: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            if len(parts) < 2 and not allow_empty_value:
                raise DataError(f"{path}:{lineno}: utterance {parts[0]!r} has no value")
            if parts[0] in out:
                raise DataError(f"{path}:{lineno}: duplicate utterance id {parts[0]!r}")
            out[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return out


class SpeechTextDataset(torch.utils.data.Dataset):
    def __init__(self, data_dir: str, *, crop_seconds: Optional[float], min_seconds: float = 0.32,
                 seed: int = 0, random_crop: bool = True, max_utts: Optional[int] = None,
                 require_text: bool = True, use_feats: bool = True):
        self.data_dir = Path(data_dir)
        wav_scp = self.data_dir / "wav.scp"
        if not wav_scp.exists():
            raise DataError(f"{self.data_dir}: no wav.scp (run recipe stage 2 first)")
        from xytok.audio import read_wav_scp

        self.wavs = read_wav_scp(str(wav_scp))
        self.texts: Dict[str, str] = {}
        text_path = self.data_dir / "text"
        if require_text:
            if not text_path.exists():
                raise DataError(f"{self.data_dir}: no text file (the ASR branch needs transcripts)")
            self.texts = read_kaldi_map(text_path, allow_empty_value=True)
            for utt in self.wavs:
                if utt not in self.texts:
                    raise DataError(f"{text_path}: missing transcript for utterance {utt!r} (it is in wav.scp)")
                if not self.texts[utt].strip():
                    raise DataError(f"{text_path}: empty transcript for utterance {utt!r}")
        self.feats = None
        feats_scp = self.data_dir / "feats.scp"
        if use_feats and feats_scp.exists():
            import kaldiio

            self.feats = kaldiio.load_scp(str(feats_scp))
        num_samples = self._read_lengths()

        self.crop = None
        if crop_seconds:
            self.crop = max(CODE_HOP, int(round(crop_seconds * SAMPLE_RATE / CODE_HOP)) * CODE_HOP)
        min_samples = max(CODE_HOP, int(min_seconds * SAMPLE_RATE))
        utts = sorted(self.wavs)
        kept, too_short = [], []
        for utt in utts:
            n = num_samples[utt]
            if n <= 0:
                raise DataError(f"{self.data_dir}: utterance {utt!r} has empty audio (0 samples)")
            (kept if n >= min_samples else too_short).append(utt)
        if too_short:
            log.warning("%s: skipping %d utterance(s) shorter than %.2f s (e.g. %s)", self.data_dir,
                        len(too_short), min_samples / SAMPLE_RATE, too_short[:3])
        if max_utts:
            kept = kept[: int(max_utts)]
        if not kept:
            raise DataError(f"{self.data_dir}: no usable utterances")
        self.utts: List[str] = kept
        self.num_samples = [num_samples[u] for u in kept]
        self.seed = seed
        self.random_crop = random_crop

    def _read_lengths(self) -> Dict[str, int]:
        path = self.data_dir / "utt2num_samples"
        if path.exists():
            raw = read_kaldi_map(path)
            out = {}
            for utt in self.wavs:
                if utt not in raw:
                    raise DataError(f"{path}: no entry for utterance {utt!r}")
                try:
                    out[utt] = int(raw[utt])
                except ValueError:
                    raise DataError(f"{path}: utterance {utt!r}: not an integer: {raw[utt]!r}") from None
            return out
        log.warning("%s: no utt2num_samples; reading every file for its length (slow)", self.data_dir)
        import soundfile as sf

        out = {}
        for utt, entry in self.wavs.items():
            try:
                out[utt] = sf.info(entry.strip()).frames
            except Exception:
                out[utt] = len(self._load_wav(utt))
        return out

    def item_length(self, i: int) -> int:
        """Samples after crop/alignment: what the sampler budgets."""
        n = (self.num_samples[i] // CODE_HOP) * CODE_HOP
        return min(n, self.crop) if self.crop else n

    def lengths(self) -> List[int]:
        return [self.item_length(i) for i in range(len(self.utts))]

    def _load_wav(self, utt: str) -> np.ndarray:
        from xytok.audio import load_audio

        wav, _ = load_audio(self.wavs[utt], target_sr=SAMPLE_RATE, utt=utt)
        return wav

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, key) -> Dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        utt = self.utts[index]
        wav = self._load_wav(utt)
        usable = (len(wav) // CODE_HOP) * CODE_HOP
        if usable == 0:
            raise DataError(f"{self.data_dir}: utterance {utt!r}: audio has {len(wav)} samples, "
                            f"shorter than one code frame ({CODE_HOP})")
        length = min(usable, self.crop) if self.crop else usable
        start = 0
        if self.random_crop and usable > length:
            rng = np.random.default_rng([int(self.seed), int(epoch), int(index)])
            start = int(rng.integers(0, (usable - length) // CODE_HOP + 1)) * CODE_HOP
        item = {"utt_id": utt, "wav": torch.from_numpy(wav[start:start + length].copy()),
                "text": self.texts.get(utt, "")}
        if self.feats is not None:
            try:
                feats = self.feats[utt]
            except KeyError:
                raise DataError(f"{self.data_dir}/feats.scp: no features for utterance {utt!r}") from None
            f0, n_frames = start // MEL_HOP, length // MEL_HOP
            if feats.ndim != 2 or feats.shape[1] != 80 or feats.shape[0] < f0 + n_frames:
                raise DataError(f"{self.data_dir}/feats.scp: utterance {utt!r}: features of shape "
                                f"{feats.shape} do not cover {len(wav)} samples (expected (>= {f0 + n_frames}, 80))")
            item["mel"] = torch.from_numpy(np.ascontiguousarray(feats[f0:f0 + n_frames].T, dtype=np.float32))
        return item


def collate(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    lengths = torch.tensor([len(it["wav"]) for it in items], dtype=torch.long)
    wav = torch.zeros(len(items), int(lengths.max()))
    for i, it in enumerate(items):
        wav[i, : len(it["wav"])] = it["wav"]
    batch = {"utt_ids": [it["utt_id"] for it in items], "wav": wav, "wav_lengths": lengths,
             "text": [it["text"] for it in items]}
    if all("mel" in it for it in items):
        mel_lengths = torch.tensor([it["mel"].shape[1] for it in items], dtype=torch.long)
        mel = torch.zeros(len(items), 80, int(mel_lengths.max()))
        for i, it in enumerate(items):
            mel[i, :, : it["mel"].shape[1]] = it["mel"]
        batch["mel"], batch["mel_lengths"] = mel, mel_lengths
    return batch


_DATASETS: Dict[Tuple[str, bool], SpeechTextDataset] = {}


def build_dataset(data_dir: str, config: Dict[str, Any], train: bool) -> SpeechTextDataset:
    """Cached per (dir, train) so epochs don't re-parse the scp files."""
    key = (str(data_dir), train)
    if key not in _DATASETS:
        d = config["data"]
        _DATASETS[key] = SpeechTextDataset(
            data_dir,
            crop_seconds=d.get("crop_seconds") if train else d.get("valid_crop_seconds"),
            min_seconds=float(d.get("min_seconds", 0.32)),
            seed=int(config.get("seed", 0)),
            random_crop=train,
            max_utts=None if train else d.get("valid_max_utts"),
            require_text=bool(d.get("require_text", True)),
            use_feats=bool(d.get("use_feats", True)),
        )
    return _DATASETS[key]


def build_dataloader(task, data_dir: str, config: Dict[str, Any], *, train: bool, epoch: int,
                     rank: int = 0, world_size: int = 1, skip_batches: int = 0):
    dataset = (task.build_dataset(data_dir, config, train) if hasattr(task, "build_dataset")
               else build_dataset(data_dir, config, train))
    d = config["data"]
    sampler = BucketBatchSampler(
        dataset.lengths(), int(d["max_frames"]), int(d["max_batch_size"]), shuffle=train,
        seed=int(config.get("seed", 0)), epoch=epoch, rank=rank, world_size=world_size,
        skip_batches=skip_batches, bucket_size=int(d.get("bucket_size", 100)),
    )
    # A private generator: DataLoader draws its worker base seed from it, not from the global RNG,
    # so creating a loader (e.g. after resume) never shifts the training RNG stream.
    gen = torch.Generator().manual_seed(int(config.get("seed", 0)) * 1000003 + epoch)
    workers = int(config.get("num_workers", 0))
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                       num_workers=workers, generator=gen,
                                       persistent_workers=False, pin_memory=False)
