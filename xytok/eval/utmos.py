"""UTMOS: the UTMOS22 strong learner (Saeki et al., "UTMOS: UTokyo-SaruLab System for VoiceMOS
Challenge 2022", Interspeech 2022), a reference-free naturalness MOS predictor.

Weights: the strong learner as released by tarepan/SpeechMOS for torch.hub (`utmos22_strong`,
https://github.com/tarepan/SpeechMOS/releases/download/v1.0.0/utmos22_strong_step7459_v1.pt, a plain
state dict derived from sarulab-speech/UTMOS22's checkpoint, MIT). `UTMOS22Strong`'s parameter names
and shapes are that file's keys, so it loads with `strict=True`; the configuration is read off the
tensor shapes (a reduced model saved the same way loads the same way - the tests use one).

Architecture (inference, no phoneme encoder): wav2vec 2.0 base (fairseq layout: 7 bias-free convs,
the first with a per-channel GroupNorm; LayerNorm + projection 512->768; a weight-normed grouped
positional conv, kernel 128, 16 groups; 12 post-LN transformer layers) -> frame features (50 Hz), each
concatenated with the data-domain embedding (domain 0, the main track) and the listener embedding of
judge id 288 (both stored as single rows; the pair the UTMOS22 demo scores with) -> BLSTM (512 per
direction) -> Linear 1024->2048, ReLU, Linear 2048->1 per frame -> score = 2 * mean over frames + 3.

Speed (random weights, real size, one CPU thread): about 0.4 s per second of audio; use --device cuda
for test sets.

Protocol: 16 kHz mono float input as read (no normalisation, no clipping - wav2vec 2.0 base was
trained on raw waveforms), whole utterance. Utterances of similar length are batched; padding is
masked everywhere it could leak (the first conv's GroupNorm statistics, the positional conv input,
attention keys, the BLSTM via packed sequences, the frame mean), so a batched score equals the
unbatched one up to float rounding.

Checked offline with random weights only (keys/shapes, transformers' Wav2Vec2Model for the SSL part,
a numpy forward for the head), not yet against the released file's scores.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

SAMPLE_RATE = 16000
RELEASED_URL = "https://github.com/tarepan/SpeechMOS/releases/download/v1.0.0/utmos22_strong_step7459_v1.pt"
MODEL_IDS = {"utmos22_strong": RELEASED_URL}  # the torch.hub name in tarepan/SpeechMOS' hubconf
DEFAULT_MODEL = RELEASED_URL
DOMAIN_ID, JUDGE_ID = 0, 288  # baked into the released domain_emb / judge_emb rows
PROTOCOL = ("UTMOS22 strong learner (SpeechMOS utmos22_strong weights unless --utmos_model says otherwise): "
            f"16 kHz mono input as read (no normalisation/clipping), whole utterance, data domain {DOMAIN_ID} and "
            f"judge id {JUDGE_ID}, score = 2 * mean of the frame outputs + 3; utmos = the reconstruction, "
            "utmos_ref = the reference; batches of similar lengths with padding masked (equal to unbatched scoring)")
# (kernel, stride) of wav2vec 2.0's conv feature encoder: 400-sample receptive field, 320-sample hop
CONV_LAYOUT = ((10, 5),) + ((3, 2),) * 4 + ((2, 2),) * 2
HEAD_DIM = 64  # wav2vec 2.0 base: 768 = 12 heads x 64 (the head count is not in the state dict)
log = logging.getLogger("xytok.utmos")


class UtmosError(Exception):
    """An utterance UTMOS cannot score (recorded per utterance) or a model that cannot be loaded."""


@dataclass(frozen=True)
class UtmosConfig:
    conv_channels: int = 512
    hidden: int = 768
    layers: int = 12
    ffn: int = 3072
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    domain_dim: int = 128
    judge_dim: int = 128
    lstm_hidden: int = 512
    proj_hidden: int = 2048

    @property
    def heads(self) -> int:
        return self.hidden // HEAD_DIM


def num_frames(num_samples: Tensor | int):
    """wav2vec 2.0 frames of a waveform of `num_samples` (no padding in the conv stack)."""
    n = num_samples
    for k, s in CONV_LAYOUT:
        n = (n - k) // s + 1
    return n


MIN_SAMPLES = 400  # one frame


# ---------------------------------------------------------------- wav2vec 2.0 (fairseq names)
class FeatureExtractor(nn.Module):
    """Seven bias-free convs with GELU; the first followed by GroupNorm(C, C) (= per-channel
    normalisation over time, fairseq's "default" extractor mode)."""

    def __init__(self, channels: int):
        super().__init__()
        blocks, c_in = [], 1
        for i, (k, s) in enumerate(CONV_LAYOUT):
            conv = nn.Conv1d(c_in, channels, k, stride=s, bias=False)
            # index 1 = dropout (p=0) and index 3 = GELU keep fairseq's Sequential positions: keys .0 / .2
            parts = [conv, nn.Dropout(0.0)] + ([nn.GroupNorm(channels, channels)] if i == 0 else []) + [nn.GELU()]
            blocks.append(nn.Sequential(*parts))
            c_in = channels
        self.conv_layers = nn.ModuleList(blocks)

    def forward(self, wave: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) samples, (B,) valid lengths -> (B, C, F) features, (B,) valid frames."""
        x, n = wave.unsqueeze(1), lengths
        for block, (k, s) in zip(self.conv_layers, CONV_LAYOUT):
            x = block[0](x)
            n = (n - k) // s + 1
            if isinstance(block[2], nn.GroupNorm):
                x = masked_channel_norm(x, n, block[2])
            x = F.gelu(x)
        return x, n


def masked_channel_norm(x: Tensor, n: Tensor, norm: nn.GroupNorm) -> Tensor:
    """GroupNorm with one channel per group, its statistics over each item's valid frames only
    (a padded tail must not move them)."""
    assert norm.num_groups == norm.num_channels
    valid = (torch.arange(x.shape[-1], device=x.device)[None, :] < n[:, None]).to(x.dtype)[:, None, :]
    count = valid.sum(-1, keepdim=True)
    mean = (x * valid).sum(-1, keepdim=True) / count
    var = (((x - mean) * valid) ** 2).sum(-1, keepdim=True) / count
    y = (x - mean) / torch.sqrt(var + norm.eps)
    return y * norm.weight[None, :, None] + norm.bias[None, :, None]


class WeightNormConv1d(nn.Module):
    """Grouped conv whose weight is weight_g * weight_v / ||weight_v||, the norm taken per kernel
    position (torch weight_norm with dim=2, as fairseq's positional conv): keys weight_g, weight_v, bias."""

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        self.kernel, self.groups = kernel, groups
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel))
        self.weight_g = nn.Parameter(torch.empty(1, 1, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.normal_(self.weight_v, 0.0, (4.0 / (kernel * channels)) ** 0.5)
        with torch.no_grad():
            self.weight_g.copy_(self.weight_v.norm(dim=(0, 1), keepdim=True))

    def weight(self) -> Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=(0, 1), keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight(), self.bias, padding=self.kernel // 2, groups=self.groups)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        """x (B, F, D); keep (B, F) True for real frames (padded keys get no attention)."""
        b, f, d = x.shape

        def split(t):
            return t.view(b, f, self.heads, d // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                                           attn_mask=keep[:, None, None, :])
        return self.out_proj(y.transpose(1, 2).reshape(b, f, d))


class EncoderLayer(nn.Module):
    """Post-LN transformer layer (wav2vec 2.0 base: layer_norm_first=False), GELU feed-forward."""

    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.self_attn = SelfAttention(dim, heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        x = self.self_attn_layer_norm(x + self.self_attn(x, keep))
        return self.final_layer_norm(x + self.fc2(F.gelu(self.fc1(x))))


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: UtmosConfig):
        super().__init__()
        # a Sequential of one so the key is pos_conv.0.* (SamePad and GELU have no weights)
        self.pos_conv = nn.Sequential(WeightNormConv1d(cfg.hidden, cfg.pos_conv_kernel, cfg.pos_conv_groups))
        self.layer_norm = nn.LayerNorm(cfg.hidden)
        self.layers = nn.ModuleList(EncoderLayer(cfg.hidden, cfg.heads, cfg.ffn) for _ in range(cfg.layers))

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        # padded frames are zeroed so the positional conv sees what its own zero padding gives unbatched
        x = x * keep[..., None].to(x.dtype)
        pos = self.pos_conv[0](x.transpose(1, 2))
        if self.pos_conv[0].kernel % 2 == 0:  # SamePad: an even kernel with padding k/2 yields one frame too many
            pos = pos[..., :-1]
        x = self.layer_norm(x + F.gelu(pos).transpose(1, 2))
        for layer in self.layers:
            x = layer(x, keep)
        return x


class Wav2Vec2(nn.Module):
    def __init__(self, cfg: UtmosConfig):
        super().__init__()
        self.feature_extractor = FeatureExtractor(cfg.conv_channels)
        self.layer_norm = nn.LayerNorm(cfg.conv_channels)
        self.post_extract_proj = nn.Linear(cfg.conv_channels, cfg.hidden)
        self.encoder = TransformerEncoder(cfg)
        # pre-training's mask embedding: unused at inference, kept because the released file has it
        self.mask_emb = nn.Parameter(torch.empty(cfg.hidden).uniform_())

    def forward(self, wave: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T), (B,) -> frame features (B, F, D), valid frames (B,)."""
        feats, n = self.feature_extractor(wave, lengths)
        x = self.post_extract_proj(self.layer_norm(feats.transpose(1, 2)))
        keep = torch.arange(x.shape[1], device=x.device)[None, :] < n[:, None]
        return self.encoder(x, keep), n


# ---------------------------------------------------------------- the MOS head
class UTMOS22Strong(nn.Module):
    """wave (B, T) at 16 kHz -> predicted MOS (B,). Attribute names = the released state dict's keys."""

    def __init__(self, cfg: UtmosConfig = UtmosConfig()):
        super().__init__()
        self.cfg = cfg
        self.wav2vec2 = Wav2Vec2(cfg)
        # single rows: the domain-0 and judge-288 embeddings of the training-time tables
        self.domain_emb = nn.Parameter(torch.empty(1, cfg.domain_dim).normal_(), requires_grad=False)
        self.judge_emb = nn.Parameter(torch.empty(1, cfg.judge_dim).normal_(), requires_grad=False)
        self.blstm = nn.LSTM(cfg.hidden + cfg.domain_dim + cfg.judge_dim, cfg.lstm_hidden,
                             batch_first=True, bidirectional=True)
        self.projection = nn.Sequential(nn.Linear(2 * cfg.lstm_hidden, cfg.proj_hidden), nn.ReLU(),
                                        nn.Linear(cfg.proj_hidden, 1))

    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> Tensor:
        if lengths is None:
            lengths = torch.full((wave.shape[0],), wave.shape[1], dtype=torch.long, device=wave.device)
        frames, n = self.wav2vec2(wave, lengths)
        return self.score_frames(frames, n)

    def frame_scores(self, frames: Tensor, n: Tensor) -> Tensor:
        """(B, F, D) SSL features, (B,) valid frames -> (B, F) per-frame outputs (padding: 0)."""
        b, f, _ = frames.shape
        cond = torch.cat([frames, self.domain_emb.expand(b, f, -1), self.judge_emb.expand(b, f, -1)], dim=2)
        packed = nn.utils.rnn.pack_padded_sequence(cond, n.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.blstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=f)
        keep = torch.arange(f, device=frames.device)[None, :] < n[:, None]
        return self.projection(out).squeeze(-1) * keep

    def score_frames(self, frames: Tensor, n: Tensor) -> Tensor:
        """Utterance score = 2 * (mean of the frame outputs over the valid frames) + 3."""
        return self.frame_scores(frames, n).sum(1) / n.to(frames.dtype) * 2 + 3


# ---------------------------------------------------------------- loading
def config_from_state_dict(state: dict) -> UtmosConfig:
    """The configuration the tensor shapes imply (the released file: UtmosConfig())."""
    try:
        v = state["wav2vec2.encoder.pos_conv.0.weight_v"]
        hidden, per_group, kernel = v.shape
        cfg = UtmosConfig(
            conv_channels=state["wav2vec2.layer_norm.weight"].shape[0], hidden=hidden,
            layers=len({k.split(".")[3] for k in state if k.startswith("wav2vec2.encoder.layers.")}),
            ffn=state["wav2vec2.encoder.layers.0.fc1.weight"].shape[0], pos_conv_kernel=kernel,
            pos_conv_groups=hidden // per_group, domain_dim=state["domain_emb"].shape[1],
            judge_dim=state["judge_emb"].shape[1], lstm_hidden=state["blstm.weight_hh_l0"].shape[1],
            proj_hidden=state["projection.0.weight"].shape[0])
    except (KeyError, AttributeError, ValueError, IndexError) as e:
        raise UtmosError(f"not a UTMOS22 strong state dict (SpeechMOS utmos22_strong layout): missing or "
                         f"malformed {e}") from e
    if cfg.hidden % HEAD_DIM:
        raise UtmosError(f"hidden size {cfg.hidden} is not a multiple of the {HEAD_DIM}-dim attention heads")
    return cfg


def resolve_model(spec: str | None) -> str:
    """A local file path, or the URL the spec names (URL itself, or a MODEL_IDS name)."""
    spec = spec or DEFAULT_MODEL
    return MODEL_IDS.get(spec, spec)


def fetch_state_dict(spec: str | None) -> tuple[dict, str]:
    """(state dict, where it came from). URLs go through torch.hub's cache (downloaded once)."""
    src = resolve_model(spec)
    if src.startswith(("http://", "https://")):
        from urllib.parse import urlparse

        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(src).path))
        try:
            state = torch.hub.load_state_dict_from_url(src, map_location="cpu", progress=False, weights_only=True)
        except OSError as e:  # URLError/HTTPError/socket errors are OSErrors
            raise UtmosError(f"cannot download {src} ({type(e).__name__}: {e}); offline? fetch it where the "
                             f"network is and pass --utmos_model /path/{os.path.basename(cached)}, or put it at "
                             f"{cached}") from e
        return state, cached
    if not os.path.isfile(src):
        raise UtmosError(f"UTMOS model {src!r} not found: give a local .pt file, an http(s) URL, or one of "
                         f"{sorted(MODEL_IDS)} (default {DEFAULT_MODEL})")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle/zip errors of a file that is not a checkpoint
        raise UtmosError(f"cannot read {src} as a torch state dict: {type(e).__name__}: {e}") from e
    return state, src


def load_model(spec: str | None = None) -> tuple[UTMOS22Strong, str]:
    state, where = fetch_state_dict(spec)
    if not isinstance(state, dict):
        raise UtmosError(f"{where}: expected a state dict, got {type(state).__name__}")
    model = UTMOS22Strong(config_from_state_dict(state))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UtmosError(f"{where} does not match the UTMOS22 strong layout: {e}") from e
    return model.eval(), where


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class UtmosScorer:
    """Built once (in the scoring parent process); scores batches of 16 kHz waveforms."""

    name = "utmos"

    def __init__(self, model: str | None = None, device: str = "cpu"):
        self.model, self.path = load_model(model)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.source = resolve_model(model)
        self.sha256 = _sha256(self.path)
        log.info("UTMOS22 strong from %s (%s, sha256 %s), %s, on %s", self.source, self.path, self.sha256[:16],
                 self.model.cfg, self.device)

    @staticmethod
    def check(wav: np.ndarray, what: str = "audio") -> np.ndarray:
        x = np.asarray(wav)
        if x.ndim != 1:
            raise UtmosError(f"{what} has shape {x.shape}, expected 1-D")
        if x.size < MIN_SAMPLES:
            raise UtmosError(f"{what} is {x.size} samples, shorter than the model's {MIN_SAMPLES}-sample frame")
        if not np.all(np.isfinite(x)):
            raise UtmosError(f"{what} contains NaN/Inf")
        return x.astype(np.float32, copy=False)

    @torch.inference_mode()
    def score_batch(self, wavs: list) -> list[float]:
        """Scores of 1-D 16 kHz float waveforms (checked with `check`), one padded batch."""
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long)
        batch = torch.zeros(len(wavs), int(lengths.max()))
        for i, w in enumerate(wavs):
            batch[i, : len(w)] = torch.from_numpy(np.ascontiguousarray(w))
        scores = self.model(batch.to(self.device), lengths.to(self.device)).float().cpu().tolist()
        bad = [s for s in scores if not np.isfinite(s)]
        if bad:
            raise UtmosError(f"UTMOS returned non-finite scores {bad}")
        return scores


def length_batches(items: list, max_batch_samples: int) -> list[list]:
    """Group (key, n_samples) items, shortest first, so that a batch's padded size
    (longest x count) stays within max_batch_samples (a longer item goes alone)."""
    out, cur = [], []
    for item in sorted(items, key=lambda it: it[1]):
        if cur and item[1] * (len(cur) + 1) > max_batch_samples:
            out.append(cur)
            cur = []
        cur.append(item)
    return out + ([cur] if cur else [])


def score_items(scorer: UtmosScorer, items: list, load, batch_seconds: float = 60.0, progress=None):
    """UTMOS of every (key, n_samples) item, `load(key) -> (16 kHz mono wav, what)`, batched by
    length. Returns (scores {key: float}, failures {key: reason}); a failing batch is retried item
    by item so one bad utterance never costs the others."""
    scores, failures, done = {}, {}, 0
    for batch in length_batches(items, int(batch_seconds * SAMPLE_RATE)):
        wavs = {}
        for key, _ in batch:
            try:
                wav, what = load(key)
                wavs[key] = scorer.check(wav, what)
            except Exception as e:  # noqa: BLE001 - unreadable/unusable input is a per-utterance failure
                failures[key] = f"utmos_failed: {type(e).__name__}: {e}"
        keys = list(wavs)
        try:
            scores.update(zip(keys, scorer.score_batch([wavs[k] for k in keys]) if keys else []))
        except Exception:  # noqa: BLE001 - e.g. out of memory on a long batch: one at a time
            for k in keys:
                try:
                    scores[k] = scorer.score_batch([wavs[k]])[0]
                except Exception as e:  # noqa: BLE001
                    failures[k] = f"utmos_failed: {type(e).__name__}: {e}"
        done += len(batch)
        if progress:
            progress(done)
    return scores, failures


def add_to_results(scorer: UtmosScorer, results: list, ref_list: dict, hyp_list: dict,
                   batch_seconds: float = 60.0, logger: logging.Logger | None = None, num_threads: int = 1) -> None:
    """Fill `utmos` (reconstruction) and `utmos_ref` (reference) into scoring's UttResults, each
    audio read again from its wav.scp entry; sides already failed by the scoring pass (unreadable
    or missing audio) stay failed with that reason. On the CPU the pass uses `num_threads` torch
    threads (scoring's workers have finished by then; the recipe reserves nj CPUs for the job)."""
    from xytok.eval.inputs import load_wav_info
    from xytok.progress import ProgressLog

    by_id = {r.utt_id: r for r in results}
    items = [((r.utt_id, col), n) for r in results
             for col, n in (("utmos", r.hyp_samples), ("utmos_ref", r.ref_samples)) if n and col not in r.failures]

    def load(key):
        utt, col = key
        wav, _ = load_wav_info((hyp_list if col == "utmos" else ref_list)[utt], utt=utt)
        return wav, f"{'reconstruction' if col == 'utmos' else 'reference'} {utt}"

    progress = ProgressLog(len(items), "UTMOS scored", unit="wavs", logger=logger or log).update
    threads = torch.get_num_threads()
    if scorer.device.type == "cpu":
        torch.set_num_threads(max(1, num_threads))
    try:
        scores, failures = score_items(scorer, items, load, batch_seconds, progress)
    finally:
        torch.set_num_threads(threads)
    for (utt, col), value in scores.items():
        by_id[utt].values[col] = value
    for (utt, col), why in failures.items():
        by_id[utt].failures[col] = why


def state_dict_shapes(cfg: UtmosConfig = UtmosConfig()) -> dict:
    """{key: shape} of a model of `cfg`, built on the meta device (no memory for the weights)."""
    with torch.device("meta"):
        model = UTMOS22Strong(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
