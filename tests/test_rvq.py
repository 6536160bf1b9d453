"""Residual VQ: official-inference equality on the golden tiny_a data, and the training path."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from xytok.nn.rvq import ResidualVQ, kmeans

GOLDEN = Path(os.environ.get("XYTOK_GOLDEN_DIR", "/work/shared/golden"))
TINY_A = GOLDEN / "tiny_a"
needs_golden = pytest.mark.skipif(not (TINY_A / "model.ckpt").exists(),
                                  reason="golden reference data /work/shared/golden/tiny_a not present")

torch.set_num_threads(1)


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
