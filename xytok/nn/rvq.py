"""Residual vector quantizer of XY-Tokenizer (8 x 1024 RVQ at 12.5 Hz in the released model).

Two behaviours share one module:

* ``.eval()`` (or ``frozen=True``): exactly the official inference. Codes are bit-identical to the
  released implementation: the residual is masked before every layer, distances are
  ``|e|^2 - 2 e.c + |c|^2`` in float32, the first best index wins, and the straight-through value
  ``e + (c - e)`` (not bitwise ``c``) feeds both the running sum and the residual.
* ``.train()`` with gradients enabled: the training-time quantizer. Codebooks are buffers learned
  by EMA (decay 0.99, Laplace smoothing eps 1e-5), initialised by k-means (10 iterations) on the
  first batch, with dead codes (EMA cluster size < 2) replaced by vectors of the current batch.
  Gradients reach the encoder through the straight-through estimator; the commitment loss pulls
  the encoder output towards its (stop-gradient) codeword. DAC-style quantizer dropout trains the
  first items of a batch with a random number of layers. Under ``torch.distributed`` the EMA
  statistics are all-reduced and the k-means / dead-code vectors come from rank 0 by broadcast,
  so every rank keeps identical codebooks.

Deliberate differences from the official training code (its inference path is unaffected):
padded frames and dropped-out items never enter the EMA / k-means / dead-code statistics (the
official code counts padded zero vectors); after k-means ``embed_avg = centroid * count`` so the
first EMA step keeps the centroids (the official stores the bare centroid there); a replaced dead
code gets ``cluster_size = threshold`` and ``embed_avg = vector * threshold`` so its new vector
survives the next EMA step.

The commitment loss returned by :meth:`ResidualVQ.forward` is the SUM over the used layers of the
per-layer mean squared error ``|z_e - sg(z_q)|^2`` over valid frames, dims and non-dropped items,
times ``commitment``.

Dead codes: ``threshold_ema_dead_code`` is an EMA count per optimizer step, so on its own its meaning
depends on how many frames a step sees (world size x batch x grad_accum). With
``dead_code_reference_frames = R`` the threshold is defined per frames seen: a code is dead when its
EMA count is below ``threshold * F / R``, F = the valid frames of the current step (all ranks), i.e.
when its share of the frames is below ``threshold / R``. (F is not taken from ``cluster_size.sum()``:
replaced codes get ``cluster_size = threshold``, so with many dead codes that sum would feed on
itself and grow without bound.) That is the released behaviour at
a batch of R frames per step, at any batch. ``None`` (the module default) keeps the absolute count.

Gradient accumulation: with ``defer_updates = True`` (set by the trainer) a training forward only
accumulates the per-code counts / sums / dead-code candidate vectors; :meth:`ResidualVQ.apply_pending_updates`
applies the EMA + dead-code step once per optimizer step (one all-reduce per step under DDP), and
:meth:`ResidualVQ.discard_pending_updates` drops them (a skipped non-finite step). Later micro-batches of
a window quantise with the not yet updated codebooks, as one big batch would.

Stage 2 (frozen quantizer): call :meth:`ResidualVQ.freeze` (or ``quantizer.eval()``): no codebook
update, no dropout, parameters get ``requires_grad=False``.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ResidualVQ", "VectorQuantizer", "kmeans"]


def _wn_conv1x1(in_dim: int, out_dim: int) -> nn.Conv1d:
    """1x1 Conv1d with legacy weight norm (keys weight_g [out,1,1] / weight_v), as released."""
    conv = nn.Conv1d(in_dim, out_dim, kernel_size=1)
    with warnings.catch_warnings():
        # The legacy API is deprecated in favour of parametrizations, but only it yields the
        # released checkpoint's `weight_g` / `weight_v` key names.
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(conv, dim=0)


def _dist_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _check_reference_frames(value):
    if value is None:
        return None
    value = float(value)
    if not value > 0:
        raise ValueError(f"dead_code_reference_frames must be > 0 (frames per optimizer step) or null, got {value}")
    return value


def _sq_distances(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(N, D) x (K, D) -> (N, K) squared distances, in the official order of float32 operations."""
    x = x.float()
    c = codebook.float()
    return x.pow(2).sum(1, keepdim=True) - 2 * x @ c.t() + c.pow(2).sum(1, keepdim=True).t()


def _nearest(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    # max of the negated distance = the official tie-breaking (first index of the minimum).
    return (-_sq_distances(x, codebook)).max(dim=1).indices


def _sample_rows(x: torch.Tensor, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`num` random rows of x (without replacement when there are enough)."""
    n = x.shape[0]
    if n >= num:
        idx = torch.randperm(n, generator=generator, device="cpu")[:num]
    else:
        idx = torch.randint(0, n, (num,), generator=generator, device="cpu")
    return x[idx.to(x.device)].float()


@torch.no_grad()
def kmeans(x: torch.Tensor, num_clusters: int, num_iters: int = 10,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on (N, D) float data; returns (centroids (K, D), counts (K,) float).

    Centroids start from random data rows; an empty cluster keeps its previous centroid.
    """
    x = x.float()
    dim = x.shape[1]
    means = _sample_rows(x, num_clusters, generator)
    for _ in range(num_iters):
        assign = _nearest(x, means)
        counts = torch.bincount(assign, minlength=num_clusters)
        sums = torch.zeros(num_clusters, dim, dtype=torch.float32, device=x.device)
        sums.index_add_(0, assign, x)
        new_means = sums / counts.clamp(min=1).unsqueeze(1)
        means = torch.where((counts == 0).unsqueeze(1), means, new_means)
    counts = torch.bincount(_nearest(x, means), minlength=num_clusters).float()
    return means, counts


class VectorQuantizer(nn.Module):
    """One RVQ layer: a codebook (buffer) learned by EMA, plus optional per-layer projections.

    Buffers (persistent, released names): codebook [K, D'], inited [1] bool, cluster_size [K],
    embed_avg [K, D']. When ``input_dim != codebook_dim`` the official layout adds weight-normed
    1x1 convs ``in_project`` / ``out_project`` (absent in the released and tiny configs).
    """

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int, decay: float = 0.99,
                 epsilon: float = 1e-5, threshold_ema_dead_code: float = 2, kmeans_iters: int = 10,
                 kmeans_init: bool = True, dead_code_reference_frames: float | None = None):
        super().__init__()
        self.input_dim = input_dim
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.decay = decay
        self.epsilon = epsilon
        self.threshold_ema_dead_code = threshold_ema_dead_code
        self.dead_code_reference_frames = _check_reference_frames(dead_code_reference_frames)
        self._step_frames: float | None = None  # valid frames of the last EMA step, all ranks
        self.kmeans_iters = kmeans_iters
        # Statistics of the micro-batches of the current accumulation window (never saved: the
        # trainer checkpoints only on optimizer-step boundaries, where they are empty).
        self._pending: dict | None = None
        if input_dim != codebook_dim:
            self.in_project = _wn_conv1x1(input_dim, codebook_dim)
            self.out_project = _wn_conv1x1(codebook_dim, input_dim)
        else:
            self.in_project = nn.Identity()
            self.out_project = nn.Identity()
        # As released: zero codebook waiting for k-means when kmeans_init, random otherwise.
        init = torch.zeros(codebook_size, codebook_dim) if kmeans_init else torch.randn(codebook_size, codebook_dim)
        self.register_buffer("codebook", init)
        self.register_buffer("inited", torch.tensor([not kmeans_init], dtype=torch.bool))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed_avg", init.clone())

    # ---- lookups -------------------------------------------------------------------------
    def decode_code(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, T) indices -> (B, D', T) codewords (codebook space, no projection)."""
        return F.embedding(indices, self.codebook).transpose(1, 2).float()

    # ---- training-time codebook maintenance ------------------------------------------------
    @torch.no_grad()
    def init_by_kmeans(self, vectors: torch.Tensor) -> None:
        """k-means on this rank's valid vectors (rank 0's under torch.distributed, broadcast)."""
        k, d = self.codebook_size, self.codebook_dim
        device = self.codebook.device
        distributed = _dist_active()
        is_source = (not distributed) or dist.get_rank() == 0
        ok = torch.zeros(1, device=device)
        means = torch.zeros(k, d, device=device)
        counts = torch.zeros(k, device=device)
        if is_source and vectors.shape[0] > 0:
            means, counts = kmeans(vectors, k, self.kmeans_iters)
            ok.fill_(1)
        if distributed:
            for t in (ok, means, counts):
                dist.broadcast(t, src=0)
        if ok.item() == 0:  # no valid frame on the source rank: try again next batch
            return
        self.codebook.copy_(means)
        self.cluster_size.copy_(counts)
        self.embed_avg.copy_(means * counts.unsqueeze(1))
        self.inited.fill_(True)

    @torch.no_grad()
    def ema_update(self, vectors: torch.Tensor, indices: torch.Tensor) -> None:
        """EMA of per-code counts and vector sums over valid frames (all-reduced across ranks)."""
        counts, sums = self._batch_stats(vectors, indices)
        self._apply_ema(counts, sums)

    def _batch_stats(self, vectors: torch.Tensor, indices: torch.Tensor):
        counts = torch.bincount(indices, minlength=self.codebook_size).float()
        sums = torch.zeros_like(self.embed_avg)
        sums.index_add_(0, indices, vectors.float())
        return counts, sums

    def _apply_ema(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        if _dist_active():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self._step_frames = float(counts.sum().item())  # all ranks' valid frames this step (for replace_dead_codes)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        # Laplace smoothing keeps unused codes from dividing by zero.
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.codebook_size * self.epsilon) * total
        self.codebook.copy_(self.embed_avg / smoothed.unsqueeze(1))

    @torch.no_grad()
    def accumulate_stats(self, vectors: torch.Tensor, indices: torch.Tensor) -> None:
        """Add one micro-batch's valid vectors / codes to the pending statistics (no collective)."""
        counts, sums = self._batch_stats(vectors, indices)
        if self._pending is None:
            self._pending = {"counts": counts, "sums": sums, "vectors": [vectors.detach().float()]}
        else:
            self._pending["counts"] += counts
            self._pending["sums"] += sums
            self._pending["vectors"].append(vectors.detach().float())

    @property
    def has_pending(self) -> bool:
        return self._pending is not None

    @torch.no_grad()
    def apply_pending(self) -> int:
        """One EMA + dead-code step from the accumulated statistics; returns the codes replaced."""
        pending, self._pending = self._pending, None
        if pending is None:
            return 0
        self._apply_ema(pending["counts"], pending["sums"])
        return self.replace_dead_codes(torch.cat(pending["vectors"]))

    def discard_pending(self) -> None:
        self._pending = None

    def dead_threshold(self, frames: float | None = None) -> float:
        """EMA count below which a code is dead (see the module docstring); `frames` = valid frames of
        the step (default: the EMA of frames per step, an estimate used for statistics only)."""
        if self.dead_code_reference_frames is None:
            return float(self.threshold_ema_dead_code)
        if frames is None:
            frames = float(self.cluster_size.sum().item())
        return float(self.threshold_ema_dead_code) * frames / self.dead_code_reference_frames

    def dead_mask(self) -> torch.Tensor:
        """Codes below the threshold now (a statistic; from the module's state only, so it is the
        same after a resume)."""
        if self.threshold_ema_dead_code <= 0:
            return torch.zeros_like(self.cluster_size, dtype=torch.bool)
        return self.cluster_size < self.dead_threshold()

    @torch.no_grad()
    def replace_dead_codes(self, vectors: torch.Tensor) -> int:
        """Codes whose EMA count fell below the threshold get random vectors of this batch."""
        if self.threshold_ema_dead_code <= 0:
            return 0
        threshold = self.dead_threshold(self._step_frames)
        dead = self.cluster_size < threshold  # identical on all ranks
        num_dead = int(dead.sum().item())
        if num_dead == 0:
            return 0
        distributed = _dist_active()
        is_source = (not distributed) or dist.get_rank() == 0
        ok = torch.zeros(1, device=self.codebook.device)
        new = torch.zeros(num_dead, self.codebook_dim, device=self.codebook.device)
        if is_source and vectors.shape[0] > 0:
            new = _sample_rows(vectors, num_dead).to(new.device)
            ok.fill_(1)
        if distributed:
            dist.broadcast(ok, src=0)
            dist.broadcast(new, src=0)
        if ok.item() == 0:
            return 0
        self.codebook[dead] = new
        self.embed_avg[dead] = new * threshold
        self.cluster_size[dead] = float(threshold)
        return num_dead

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, residual: torch.Tensor, valid: torch.Tensor | None = None, update: bool = False,
                defer: bool = False):
        """Quantize a masked residual (B, D, T).

        valid: (B, T) bool frames allowed into codebook statistics (used when ``update``).
        defer: with ``update``, only accumulate the statistics (see :meth:`apply_pending`).
        Returns (value (B, D, T) straight-through output, indices (B, T), sq_err (B, T) summed over
        codebook dims, z_e (B, D', T)).
        """
        z_e = self.in_project(residual.float()).float()
        batch, dim, frames = z_e.shape
        flat = z_e.detach().permute(0, 2, 1).reshape(-1, dim)
        if valid is None:
            valid = torch.ones(batch, frames, dtype=torch.bool, device=z_e.device)
        valid_flat = valid.reshape(-1)
        if update and not bool(self.inited.item()):
            self.init_by_kmeans(flat[valid_flat])
        indices = _nearest(flat, self.codebook).view(batch, frames)
        z_q = self.decode_code(indices)
        sq_err = (z_e - z_q.detach()).pow(2).sum(1)
        if update and defer:
            self.accumulate_stats(flat[valid_flat], indices.reshape(-1)[valid_flat])
        elif update:
            self.ema_update(flat[valid_flat], indices.reshape(-1)[valid_flat])
            self.replace_dead_codes(flat[valid_flat])
        value = z_e + (z_q - z_e).detach()  # straight-through estimator
        return self.out_project(value).float(), indices, sq_err, z_e


class ResidualVQ(nn.Module):
    """Residual VQ with the released constructor keys and state-dict names.

    forward(x (B, input_dim, T), lengths (B,)) -> (zq (B, output_dim, T), codes (nq, B, T) long,
    commit_loss scalar, stats dict). See the module docstring for train/eval behaviour.
    """

    def __init__(self, input_dim: int = 1280, rvq_dim: int | None = None, output_dim: int | None = None,
                 num_quantizers: int = 8, codebook_size: int = 1024, codebook_dim: int = 8,
                 quantizer_dropout: float = 0.0, commitment: float = 1.0, decay: float = 0.99,
                 epsilon: float = 1e-5, kmeans_iters: int = 10, threshold_ema_dead_code: float = 2,
                 kmeans_init: bool = True, frozen: bool = False, dead_code_reference_frames: float | None = None):
        super().__init__()
        rvq_dim = rvq_dim or input_dim
        output_dim = output_dim or input_dim
        if not 0.0 <= quantizer_dropout <= 1.0:
            raise ValueError(f"quantizer_dropout must be in [0, 1], got {quantizer_dropout}")
        self.input_dim, self.rvq_dim, self.output_dim = input_dim, rvq_dim, output_dim
        self.num_quantizers = num_quantizers
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.quantizer_dropout = quantizer_dropout
        self.commitment = commitment
        self.threshold_ema_dead_code = threshold_ema_dead_code
        self.frozen = frozen
        # True under the trainer: forward accumulates, apply_pending_updates() steps the EMA.
        self.defer_updates = False
        # Registration order = released state-dict order: input_proj, output_proj, quantizers.
        self.input_proj = _wn_conv1x1(input_dim, rvq_dim) if input_dim != rvq_dim else nn.Identity()
        self.output_proj = _wn_conv1x1(rvq_dim, output_dim) if rvq_dim != output_dim else nn.Identity()
        self.quantizers = nn.ModuleList(
            VectorQuantizer(rvq_dim, codebook_size, codebook_dim, decay=decay, epsilon=epsilon,
                            threshold_ema_dead_code=threshold_ema_dead_code,
                            kmeans_iters=kmeans_iters, kmeans_init=kmeans_init,
                            dead_code_reference_frames=dead_code_reference_frames)
            for _ in range(num_quantizers)
        )

    def set_dead_code_reference_frames(self, frames: float | None) -> None:
        """Training setting (not part of the released architecture): see the module docstring."""
        frames = _check_reference_frames(frames)
        for quantizer in self.quantizers:
            quantizer.dead_code_reference_frames = frames

    @torch.no_grad()
    def apply_pending_updates(self) -> int:
        """EMA + dead-code step of every layer from the statistics accumulated since the last call
        (a collective under DDP: every rank calls it at the same optimizer step). Returns the number
        of replaced codes."""
        return sum(quantizer.apply_pending() for quantizer in self.quantizers)

    def discard_pending_updates(self) -> None:
        for quantizer in self.quantizers:
            quantizer.discard_pending()

    @property
    def has_pending_updates(self) -> bool:
        return any(quantizer.has_pending for quantizer in self.quantizers)

    def freeze(self) -> "ResidualVQ":
        """Stage 2: behave as inference even in train mode; no gradients to the projections."""
        self.frozen = True
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor) -> None:
        """k-means-initialise every layer on all frames of x (B, input_dim, T), layer by layer on the
        residual, as the first training batch does. Builds the "step 0" quantizer of an untrained
        codec (a zero codebook maps every frame to code 0)."""
        residual = self.input_proj(x).float()
        for quantizer in self.quantizers:
            flat = quantizer.in_project(residual).permute(0, 2, 1).reshape(-1, quantizer.codebook_dim)
            quantizer.init_by_kmeans(flat)
            value, _, _, _ = quantizer(residual, update=False)
            residual = residual - value

    @property
    def updating(self) -> bool:
        """True when this forward learns codebooks / applies dropout (train mode, grad on, not frozen)."""
        return self.training and not self.frozen and torch.is_grad_enabled()

    def _layers_per_item(self, batch: int, device) -> torch.Tensor:
        """DAC-style quantizer dropout: the first int(B*p) items use a random 1..nq layers."""
        n_q = torch.full((batch,), self.num_quantizers, dtype=torch.long, device=device)
        n_drop = int(batch * self.quantizer_dropout) if self.updating else 0
        if n_drop > 0:
            n_q[:n_drop] = torch.randint(1, self.num_quantizers + 1, (n_drop,), device=device)
        return n_q

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        if x.dim() != 3 or x.shape[1] != self.input_dim:
            raise ValueError(f"ResidualVQ expects (B, {self.input_dim}, T), got {tuple(x.shape)}")
        z = self.input_proj(x)
        batch, _, frames = z.shape
        if lengths is None:
            lengths = torch.full((batch,), frames, dtype=torch.long, device=z.device)
        time_mask = torch.arange(frames, device=z.device).unsqueeze(0) < lengths.to(z.device).unsqueeze(1)
        n_q = self._layers_per_item(batch, z.device)

        # Distances and EMA must stay float32 under mixed precision (as the official code does).
        with torch.autocast(device_type=z.device.type, enabled=False):
            quantized, codes, layer_losses, stats = self._quantize(z.float(), time_mask, n_q)
        zq = self.output_proj(quantized)
        return zq, codes, layer_losses.sum(), stats

    def _quantize(self, z: torch.Tensor, time_mask: torch.Tensor, n_q: torch.Tensor):
        update = self.updating
        quantized = torch.zeros_like(z, dtype=torch.float32)
        residual = z.clone()
        codes, layer_losses, usage, perplexity, dead = [], [], [], [], []
        for i, quantizer in enumerate(self.quantizers):
            active = time_mask & (i < n_q).unsqueeze(1)  # (B, T): frames this layer really codes
            masked_residual = residual * time_mask.unsqueeze(1)
            value, idx, sq_err, z_e = quantizer(masked_residual, active, update=update,
                                                defer=self.defer_updates)
            step = active.unsqueeze(1)
            quantized = quantized + value * step
            residual = residual - value * step
            codes.append(idx)
            n_valid = active.sum()
            # Masked mean of |z_e - sg(z_q)|^2 over valid frames and codebook dims.
            layer_losses.append((sq_err * active).sum() / (n_valid.clamp(min=1) * z_e.shape[1]))
            used = idx[active]
            hist = torch.bincount(used, minlength=self.codebook_size).float()
            usage.append((hist > 0).sum())
            prob = hist / hist.sum().clamp(min=1)
            perplexity.append(torch.exp(-(prob * torch.log(prob.clamp(min=1e-10))).sum()))
            dead.append(quantizer.dead_mask().sum())
        layer_losses = torch.stack(layer_losses) * self.commitment
        stats = {
            "commit_loss_per_layer": layer_losses.detach(),
            "codebook_usage": torch.stack(usage),
            "perplexity": torch.stack(perplexity),
            "dead_codes": torch.stack(dead),
            "n_quantizers": n_q,
        }
        return quantized, torch.stack(codes), layer_losses, stats

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(nq', B, T) codes, nq' <= num_quantizers -> (B, output_dim, T); no masking (as official)."""
        if codes.dim() != 3 or not 1 <= codes.shape[0] <= self.num_quantizers:
            raise ValueError(f"codes must be (nq<= {self.num_quantizers}, B, T), got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"code values must be in [0, {self.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        _, batch, frames = codes.shape
        emb = torch.zeros(batch, self.rvq_dim, frames, dtype=torch.float32, device=codes.device)
        for quantizer, layer_codes in zip(self.quantizers, codes):
            emb += quantizer.out_project(quantizer.decode_code(layer_codes.long()))
        return self.output_proj(emb)
