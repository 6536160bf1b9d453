"""Residual VQ: official-inference equality on the golden tiny_a data, and the training path."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from xytok.nn.rvq import ResidualVQ, kmeans
from golden import GOLDEN as _GOLDEN

GOLDEN = _GOLDEN
TINY_A = GOLDEN / "tiny_a"
needs_golden = pytest.mark.skipif(not (TINY_A / "model.ckpt").exists(),
                                  reason=f"golden reference data {_GOLDEN / 'tiny_a'} not present")


def _golden_quantizer(folder: Path = TINY_A) -> ResidualVQ:
    cfg = yaml.safe_load((folder / "config.yaml").read_text())["generator_params"]["quantizer_kwargs"]
    rvq = ResidualVQ(**cfg)
    state = torch.load(folder / "model.ckpt", map_location="cpu", weights_only=True)["generator"]
    sub = {k[len("quantizer."):]: v for k, v in state.items() if k.startswith("quantizer.")}
    rvq.load_state_dict(sub, strict=True)
    return rvq.eval()


# ------------------------------------------------------------------------------------------------
# inference equality with the official implementation
# ------------------------------------------------------------------------------------------------
@needs_golden
def test_state_dict_keys_shapes_match_released():
    state = torch.load(TINY_A / "model.ckpt", map_location="cpu", weights_only=True)["generator"]
    released = {k[len("quantizer."):]: tuple(v.shape) for k, v in state.items() if k.startswith("quantizer.")}
    ours = {k: tuple(v.shape) for k, v in _golden_quantizer().state_dict().items()}
    assert ours == released
    assert list(ours) == list(released)  # same order too
    rvq = _golden_quantizer()
    assert rvq.quantizers[0].inited.dtype == torch.bool


@needs_golden
def test_weight_norm_effective_weights():
    rvq = _golden_quantizer()
    ref = np.load(TINY_A / "weightnorm_effective_weights.npz")
    rvq(torch.zeros(1, rvq.input_dim, 4), torch.tensor([4]))  # the weight is recomputed in forward
    for name in ("input_proj", "output_proj"):
        ours = getattr(rvq, name).weight.detach().numpy()
        np.testing.assert_allclose(ours, ref[f"quantizer.{name}.weight"], rtol=0, atol=1e-7)


@needs_golden
@pytest.mark.parametrize("case", ["expected_short", "expected_batch"])
def test_golden_inference(case):
    ref = np.load(TINY_A / f"{case}.npz")
    rvq = _golden_quantizer()
    x = torch.from_numpy(ref["downsample_output"])
    lengths = torch.from_numpy(ref["codes_lengths"])
    with torch.no_grad():
        zq, codes, commit_loss, stats = rvq(x, lengths)
        if "quantizer_input_proj_output" in ref:
            np.testing.assert_allclose(rvq.input_proj(x).numpy(), ref["quantizer_input_proj_output"], atol=1e-5)
    assert codes.dtype == torch.long
    np.testing.assert_array_equal(codes.numpy(), ref["codes"])
    np.testing.assert_allclose(zq.numpy(), ref["zq"], rtol=0, atol=1e-5)
    assert commit_loss.dim() == 0 and torch.isfinite(commit_loss)
    assert stats["codebook_usage"].shape == (rvq.num_quantizers,)
    # eval never touches the buffers
    fresh = _golden_quantizer().state_dict()
    for k, v in rvq.state_dict().items():
        assert torch.equal(v, fresh[k]), k


@needs_golden
def test_golden_all_quantized_and_decode_codes():
    ref = np.load(TINY_A / "expected_short.npz")
    rvq = _golden_quantizer()
    # Per-layer straight-through values, captured from the layers' outputs.
    captured = []
    hooks = [q.register_forward_hook(lambda m, i, o: captured.append(o[0].detach())) for q in rvq.quantizers]
    with torch.no_grad():
        rvq(torch.from_numpy(ref["downsample_output"]), torch.from_numpy(ref["codes_lengths"]))
    for h in hooks:
        h.remove()
    np.testing.assert_allclose(torch.stack(captured).numpy(), ref["quantizer_all_quantized"], rtol=0, atol=1e-5)
    with torch.no_grad():
        decoded = rvq.decode_codes(torch.from_numpy(ref["detok_codes_in"]))
    np.testing.assert_allclose(decoded.numpy(), ref["detok_decode_codes_output"], rtol=0, atol=1e-5)


@needs_golden
def test_padded_frames_get_smallest_norm_code():
    ref = np.load(TINY_A / "expected_short.npz")
    rvq = _golden_quantizer()
    with torch.no_grad():
        zq, codes, _, _ = rvq(torch.from_numpy(ref["downsample_output"]), torch.from_numpy(ref["codes_lengths"]))
    length = int(ref["codes_lengths"][0])
    for i, q in enumerate(rvq.quantizers):
        assert (codes[i, 0, length:] == q.codebook.pow(2).sum(1).argmin()).all()
    bias = rvq.output_proj.bias.detach()
    torch.testing.assert_close(zq[0, :, length:], bias[:, None].expand(-1, zq.shape[2] - length))


def test_decode_codes_rejects_bad_codes():
    rvq = ResidualVQ(8, 4, 8, num_quantizers=2, codebook_size=16, codebook_dim=4).eval()
    with pytest.raises(ValueError, match="code values"):
        rvq.decode_codes(torch.full((2, 1, 3), 16))
    with pytest.raises(ValueError, match="nq"):
        rvq.decode_codes(torch.zeros(3, 1, 3, dtype=torch.long))


# ------------------------------------------------------------------------------------------------
# training path
# ------------------------------------------------------------------------------------------------
def _tiny_rvq(**kw) -> ResidualVQ:
    args = dict(input_dim=6, rvq_dim=3, output_dim=6, num_quantizers=2, codebook_size=4, codebook_dim=3,
                decay=0.9, epsilon=1e-5, threshold_ema_dead_code=0)
    args.update(kw)
    torch.manual_seed(0)
    rvq = ResidualVQ(**args)
    for q in rvq.quantizers:  # a known, already-initialised codebook
        q.codebook.copy_(torch.randn(q.codebook_size, q.codebook_dim))
        q.embed_avg.copy_(q.codebook)
        q.cluster_size.fill_(1.0)
        q.inited.fill_(True)
    return rvq


def test_ema_update_matches_hand_computation():
    rvq = _tiny_rvq(num_quantizers=1)
    q = rvq.quantizers[0]
    old_codebook, old_avg, old_size = q.codebook.clone(), q.embed_avg.clone(), q.cluster_size.clone()
    x = torch.randn(2, 6, 5)
    lengths = torch.tensor([5, 3])
    rvq.train()
    _, codes, _, _ = rvq(x, lengths)

    # by hand, in float64 numpy: residual = input_proj(x) on valid frames, nearest old codeword
    with torch.no_grad():
        e = rvq.input_proj(x).permute(0, 2, 1).double().numpy()  # (B, T, D)
    cb = old_codebook.double().numpy()
    vecs, idx = [], []
    for b, n in enumerate(lengths.tolist()):
        for t in range(n):
            d = ((e[b, t][None, :] - cb) ** 2).sum(1)
            vecs.append(e[b, t])
            idx.append(int(d.argmin()))
            assert codes[0, b, t].item() == idx[-1]
    vecs, idx = np.array(vecs), np.array(idx)
    counts = np.bincount(idx, minlength=4).astype(float)
    sums = np.zeros((4, 3))
    np.add.at(sums, idx, vecs)
    size = 0.9 * old_size.double().numpy() + 0.1 * counts
    avg = 0.9 * old_avg.double().numpy() + 0.1 * sums
    n = size.sum()
    smoothed = (size + 1e-5) / (n + 4 * 1e-5) * n
    np.testing.assert_allclose(q.cluster_size.numpy(), size, rtol=1e-6)
    np.testing.assert_allclose(q.embed_avg.numpy(), avg, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(q.codebook.numpy(), avg / smoothed[:, None], rtol=1e-5, atol=1e-6)


def test_masked_frames_do_not_affect_statistics():
    x = torch.randn(2, 6, 7)
    lengths = torch.tensor([7, 4])
    results = []
    for garbage in (0.0, 1e3):
        rvq = _tiny_rvq(threshold_ema_dead_code=2).train()
        xg = x.clone()
        xg[1, :, 4:] = garbage
        torch.manual_seed(1)
        _, codes, loss, stats = rvq(xg, lengths)
        results.append((rvq.state_dict(), codes[:, 1, :4], loss.detach()))
    (sd_a, codes_a, loss_a), (sd_b, codes_b, loss_b) = results
    for k in sd_a:
        torch.testing.assert_close(sd_a[k], sd_b[k], rtol=0, atol=0, msg=k)
    assert torch.equal(codes_a, codes_b) and torch.equal(loss_a, loss_b)


def test_cluster_size_counts_only_valid_frames():
    rvq = _tiny_rvq().train()
    rvq(torch.randn(3, 6, 8), torch.tensor([8, 5, 2]))
    for q in rvq.quantizers:
        assert q.cluster_size.sum().item() == pytest.approx(0.9 * 4 + 0.1 * 15, rel=1e-6)


def test_dead_code_replaced_by_batch_vector():
    rvq = _tiny_rvq(num_quantizers=1, threshold_ema_dead_code=2)
    q = rvq.quantizers[0]
    q.codebook[3] = 1e4  # never chosen: it stays dead and must be replaced
    q.cluster_size.fill_(5.0)
    q.cluster_size[3] = 0.0
    q.embed_avg.copy_(q.codebook * 5.0)
    x = torch.randn(2, 6, 6)
    lengths = torch.tensor([6, 2])
    rvq.train()
    _, _, _, stats = rvq(x, lengths)
    with torch.no_grad():
        valid = rvq.input_proj(x).permute(0, 2, 1)
    valid = torch.cat([valid[0, :6], valid[1, :2]])
    dist_to_batch = (valid - q.codebook[3]).norm(dim=1).min().item()
    assert dist_to_batch < 1e-6, "the dead code should now be one of the batch's valid vectors"
    assert q.cluster_size[3].item() == 2.0
    torch.testing.assert_close(q.embed_avg[3], q.codebook[3] * 2.0)
    assert int(stats["dead_codes"][0]) == 0


def test_kmeans_init_on_first_batch():
    torch.manual_seed(0)
    rvq = ResidualVQ(6, 3, 6, num_quantizers=2, codebook_size=4, codebook_dim=3, threshold_ema_dead_code=0)
    assert not any(bool(q.inited) for q in rvq.quantizers)
    assert all(q.codebook.abs().sum() == 0 for q in rvq.quantizers)  # released init: zeros
    rvq.eval()
    with torch.no_grad():
        rvq(torch.randn(1, 6, 5), torch.tensor([5]))
    assert not any(bool(q.inited) for q in rvq.quantizers), "eval must never run k-means"
    rvq.train()
    x = torch.randn(2, 6, 40)
    lengths = torch.tensor([40, 25])
    rvq(x, lengths)
    for q in rvq.quantizers:
        assert bool(q.inited)
        assert q.codebook.abs().sum() > 0
        assert q.cluster_size.sum().item() == pytest.approx(65, rel=1e-5)  # k-means counts + EMA
    # layer 0 was initialised from the valid projected frames: every centroid lies in their hull
    with torch.no_grad():
        e = rvq.input_proj(x).permute(0, 2, 1)
    data = torch.cat([e[0, :40], e[1, :25]])
    cb0 = rvq.quantizers[0].codebook
    assert (cb0.min(0).values >= data.min(0).values - 1e-5).all()
    assert (cb0.max(0).values <= data.max(0).values + 1e-5).all()


def test_init_codebooks_builds_a_step0_quantizer():
    """init_codebooks: every layer k-means-initialised on the residual, so an untrained RVQ codes
    different frames differently (a zero codebook maps all of them to code 0)."""
    torch.manual_seed(0)
    rvq = ResidualVQ(6, 4, 6, num_quantizers=3, codebook_size=8, codebook_dim=4).eval()
    x = torch.randn(1, 6, 200)
    with torch.no_grad():
        zq0, codes0, _, _ = rvq(x)
    assert codes0.unique().tolist() == [0] and torch.allclose(zq0, zq0[:, :, :1].expand_as(zq0))
    rvq.init_codebooks(x)
    assert all(bool(q.inited) and q.codebook.abs().sum() > 0 for q in rvq.quantizers)
    with torch.no_grad():
        zq, codes, _, _ = rvq(x)
        target = rvq.input_proj(x)
    assert all(len(codes[i].unique()) > 4 for i in range(3))
    # each layer quantizes what the previous ones left: the residual error shrinks layer by layer
    errors, residual = [], target.clone()
    for q in rvq.quantizers:
        value, _, _, _ = q(residual)
        residual = residual - value
        errors.append(residual.pow(2).mean().item())
    assert errors[0] < target.pow(2).mean().item() and errors[2] < errors[1] < errors[0]


def test_kmeans_is_a_fixed_point_of_lloyd():
    g = torch.Generator().manual_seed(3)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    data = torch.cat([c + 0.1 * torch.randn(30, 2, generator=g) for c in centres])
    means, counts = kmeans(data, 3, num_iters=10, generator=g)
    assert counts.sum().item() == 90
    assign = ((data[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    for k in range(3):
        if counts[k] > 0:
            torch.testing.assert_close(means[k], data[assign == k].mean(0), atol=1e-5, rtol=0)


def test_quantizer_dropout_uses_fewer_layers():
    torch.manual_seed(0)
    rvq = _tiny_rvq(num_quantizers=4, quantizer_dropout=1.0).train()
    before = [q.codebook.clone() for q in rvq.quantizers]
    x = torch.randn(8, 6, 5)
    lengths = torch.full((8,), 5)
    zq, codes, _, stats = rvq(x, lengths)
    n_q = stats["n_quantizers"]
    assert n_q.min() >= 1 and n_q.max() <= 4 and (n_q < 4).any()
    with torch.no_grad():
        for b in range(8):
            summed = sum(before[i][codes[i, b]].t() for i in range(int(n_q[b])))  # (D, T)
            expected = rvq.output_proj(summed[None])[0]
            torch.testing.assert_close(zq[b].detach(), expected, atol=1e-5, rtol=0)
    # eval and frozen modes never drop layers
    rvq.eval()
    assert (rvq(x, lengths)[3]["n_quantizers"] == 4).all()
    rvq.train().freeze()
    assert (rvq(x, lengths)[3]["n_quantizers"] == 4).all()


def test_frozen_and_no_grad_do_not_update_buffers():
    rvq = _tiny_rvq(threshold_ema_dead_code=2).train()
    snapshot = {k: v.clone() for k, v in rvq.state_dict().items()}
    with torch.no_grad():
        rvq(torch.randn(2, 6, 5), torch.tensor([5, 5]))
    rvq.freeze()
    out = rvq(torch.randn(2, 6, 5), torch.tensor([5, 5]))
    for k, v in rvq.state_dict().items():
        assert torch.equal(v, snapshot[k]), k
    assert not any(p.requires_grad for p in rvq.parameters())
    assert out[0].shape == (2, 6, 5)


def test_straight_through_gradient_and_commitment_loss():
    rvq = _tiny_rvq(num_quantizers=1, commitment=0.25).train()
    before = rvq.quantizers[0].codebook.clone()
    x = torch.randn(2, 6, 5, requires_grad=True)
    lengths = torch.tensor([5, 3])
    zq, codes, loss, stats = rvq(x, lengths)
    with torch.no_grad():
        e = rvq.input_proj(x).permute(0, 2, 1)
        c = before[codes[0]]
        mask = torch.arange(5)[None] < lengths[:, None]
        expected = ((e - c) ** 2).sum(-1)[mask].sum() / (mask.sum() * 3) * 0.25
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-7)
    (zq.pow(2).sum() + loss).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert rvq.input_proj.weight_v.grad is not None and rvq.output_proj.weight_v.grad is not None
    assert stats["codebook_usage"][0] <= 4 and stats["perplexity"][0] >= 1.0


def test_per_layer_projections_when_codebook_dim_differs():
    rvq = ResidualVQ(8, 6, 8, num_quantizers=2, codebook_size=16, codebook_dim=3)
    keys = set(rvq.state_dict())
    assert {"quantizers.0.in_project.weight_g", "quantizers.0.out_project.weight_v"} <= keys
    rvq.train()
    x = torch.randn(2, 8, 10)
    zq, codes, loss, _ = rvq(x, torch.tensor([10, 7]))
    rvq.eval()
    with torch.no_grad():
        zq_eval, codes_eval, _, _ = rvq(x, torch.tensor([10, 7]))
        decoded = rvq.decode_codes(codes_eval)
    assert zq.shape == (2, 8, 10) and codes.shape == (2, 2, 10)
    torch.testing.assert_close(decoded[0], zq_eval[0], atol=1e-5, rtol=0)


def test_autocast_keeps_code_search_in_float32():
    # No projections, a crowded codebook: a bfloat16 distance matmul would flip many codes.
    rvq = _tiny_rvq(input_dim=3, rvq_dim=3, output_dim=3, codebook_size=256).eval()
    x = torch.randn(2, 3, 200)
    lengths = torch.tensor([200, 150])
    with torch.no_grad():
        _, codes_fp32, _, _ = rvq(x, lengths)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, codes_amp, _, _ = rvq(x, lengths)
    assert torch.equal(codes_fp32, codes_amp)


@pytest.mark.skipif(not (GOLDEN / "full" / "manifest.json").exists(), reason="golden full/manifest.json not present")
def test_released_config_matches_manifest():
    import json
    cfg = yaml.safe_load((GOLDEN / "full" / "config.yaml").read_text())["generator_params"]["quantizer_kwargs"]
    manifest = json.loads((GOLDEN / "full" / "manifest.json").read_text())
    released = {name[len("quantizer."):]: list(shape) for name, shape, _, _ in manifest["state_dict"]
                if name.startswith("quantizer.")}
    rvq = ResidualVQ(**cfg)
    assert {k: list(v.shape) for k, v in rvq.state_dict().items()} == released
    assert sum(p.numel() for p in rvq.parameters()) == manifest["num_parameters_per_top_level_module"]["quantizer"]
    assert sum(b.numel() for b in rvq.buffers()) == manifest["num_buffer_elements_per_top_level_module"]["quantizer"]
