"""Building from the released config, strict checkpoint loading and its error messages."""

import json

import pytest
import torch
import yaml

from xytok.checkpoint import CheckpointMismatchError
from xytok.codec import XYTokenizer, build_codec, load_codec
from golden import GOLDEN as _GOLDEN

GOLDEN = _GOLDEN
TINY = GOLDEN / "tiny_a"


def test_released_config_gives_manifest_keys_shapes_dtypes():
    manifest = json.loads((GOLDEN / "full" / "manifest.json").read_text())
    with torch.device("meta"):  # no 2 GB allocation
        codec = build_codec(GOLDEN / "full" / "config.yaml")
    ours = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in codec.state_dict().items()]
    assert ours == [entry[:3] for entry in manifest["state_dict"]]
    assert sum(p.numel() for p in codec.parameters()) == manifest["num_parameters_total"]
    per_module = {name: sum(p.numel() for p in m.parameters()) for name, m in codec.named_children()}
    assert per_module == manifest["num_parameters_per_top_level_module"]
    assert list(per_module) == manifest["top_level_child_modules_in_registration_order"]


def test_random_init_has_uninited_codebooks():
    codec = load_codec(TINY / "config.yaml")
    assert not codec.training
    assert all(not bool(q.inited) for q in codec.quantizer.quantizers)


def test_loads_wrapped_and_bare_and_dict_config(tmp_path):
    ref = torch.load(TINY / "model.ckpt", map_location="cpu", weights_only=True)["generator"]
    bare = tmp_path / "bare.pt"
    torch.save(ref, bare)
    cfg = yaml.safe_load((TINY / "config.yaml").read_text())
    for config in (cfg, cfg["generator_params"], str(TINY / "config.yaml")):
        codec = load_codec(config, bare)
        sd = codec.state_dict()
        assert set(sd) == set(ref)
        assert all(torch.equal(sd[k], ref[k]) for k in ref)
    # positional tables come from the checkpoint and equal the float32 recomputation
    assert torch.equal(codec.semantic_encoder.positional_embedding, ref["semantic_encoder.positional_embedding"])
    fresh = build_codec(cfg)
    assert torch.equal(fresh.post_rvq_adapter.positional_embedding, ref["post_rvq_adapter.positional_embedding"])
    assert torch.equal(fresh.vocos.head.istft.window, ref["vocos.head.istft.window"])


def test_parametrization_weight_norm_keys_are_accepted(tmp_path):
    ref = torch.load(TINY / "model.ckpt", map_location="cpu", weights_only=True)["generator"]
    renamed = {}
    for k, v in ref.items():
        k = k.replace("input_proj.weight_g", "input_proj.parametrizations.weight.original0")
        k = k.replace("input_proj.weight_v", "input_proj.parametrizations.weight.original1")
        renamed[k] = v
    path = tmp_path / "new_style.ckpt"
    torch.save({"generator": renamed}, path)
    codec = load_codec(TINY / "config.yaml", path)
    assert torch.equal(codec.state_dict()["quantizer.input_proj.weight_g"], ref["quantizer.input_proj.weight_g"])


def _broken(tmp_path, mutate):
    sd = dict(torch.load(TINY / "model.ckpt", map_location="cpu", weights_only=True)["generator"])
    mutate(sd)
    path = tmp_path / "broken.ckpt"
    torch.save({"generator": sd}, path)
    return path


def test_missing_key_is_named_with_file(tmp_path):
    path = _broken(tmp_path, lambda sd: sd.pop("vocos.head.out.bias"))
    with pytest.raises(CheckpointMismatchError) as err:
        load_codec(TINY / "config.yaml", path)
    msg = str(err.value)
    assert str(path) in msg and "missing keys (1)" in msg and "vocos.head.out.bias" in msg


def test_unexpected_key_is_named(tmp_path):
    path = _broken(tmp_path, lambda sd: sd.__setitem__("extra.thing", torch.zeros(3)))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(1\):\n    extra.thing"):
        load_codec(TINY / "config.yaml", path)


def test_shape_mismatch_is_named(tmp_path):
    path = _broken(tmp_path, lambda sd: sd.__setitem__("downsample.layer_norm.weight", torch.ones(7)))
    with pytest.raises(CheckpointMismatchError, match=r"downsample.layer_norm.weight: checkpoint \(7,\) vs model \(256,\)"):
        load_codec(TINY / "config.yaml", path)


def test_checkpoint_for_another_config_fails(tmp_path):
    cfg = yaml.safe_load((TINY / "config.yaml").read_text())
    cfg["generator_params"]["vocos_kwargs"]["num_layers"] = 3
    with pytest.raises(CheckpointMismatchError, match="vocos.backbone.convnext.2"):
        load_codec(cfg, TINY / "model.ckpt")


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_codec(TINY / "config.yaml", tmp_path / "nope.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="junk.ckpt"):
        load_codec(TINY / "config.yaml", junk)
    notdict = tmp_path / "list.ckpt"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(CheckpointMismatchError, match="list.ckpt"):
        load_codec(TINY / "config.yaml", notdict)
    with pytest.raises(FileNotFoundError):
        load_codec(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="vocos_kwargs"):
        load_codec({"generator_params": {"semantic_encoder_kwargs": {}}})
    cfg = yaml.safe_load((TINY / "config.yaml").read_text())
    cfg["generator_params"]["downsample_kwargs"]["avg_pool"] = 4  # typo must not pass silently
    with pytest.raises(ValueError, match="downsample_kwargs.*avg_pool"):
        load_codec(cfg)


def test_class_is_exported():
    import xytok
    assert xytok.XYTokenizer is XYTokenizer and xytok.load_codec is load_codec


def test_training_blocks_are_differentiable():
    torch.manual_seed(0)
    codec = build_codec(TINY / "config.yaml").train()
    wav = 0.1 * torch.randn(2, 12800)
    mel, mel_len = codec.wav_to_mel(wav, torch.tensor([12800, 9000]))
    tok = codec.tokenize(mel, mel_len)
    assert all(bool(q.inited) for q in codec.quantizer.quantizers)  # k-means on the first batch
    # trimmed mel: 80 valid + 2 boundary frames -> 41 encoder steps -> ceil(41/4) = 11 code frames
    assert tok["codes"].shape == (4, 2, 11) and tok["codes_lengths"].tolist() == [10, 7]
    assert tok["semantic"].shape == (2, 64, 41) and tok["encoder_lengths"].tolist() == [40, 28]
    det = codec.detokenize_from_zq(tok["zq"], tok["codes_lengths"])
    assert det["wav"].shape == (2, 11 * 1280) and det["mel_out"].shape == (2, 80, 88)
    assert det["wav_lengths"].tolist() == [12800, 7 * 1280]
    (det["wav"].pow(2).mean() + tok["commit_loss"]).backward()
    assert codec.semantic_encoder.conv1.weight.grad.abs().sum() > 0
    assert codec.acoustic_encoder.conv1.weight.grad.abs().sum() > 0
    assert codec.vocos.head.out.weight.grad.abs().sum() > 0
