"""Whisper initialisation: a tiny HF WhisperModel (saved with save_pretrained, loaded offline by
path) mapped into the tiny codec's encoders must reproduce HF's encoder hidden states."""
import os

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install xytok[hf])")

from xytok.whisper_init import WhisperInitError, load_whisper_encoder_into  # noqa: E402
from golden import TINY_A

GOLDEN = str(TINY_A)
if not os.path.isdir(GOLDEN):  # repo-local fallback
    GOLDEN = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "golden", "tiny_a")


def tiny_whisper(d_model=64, layers=2, heads=4, ffn=128, seed=0):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    cfg = WhisperConfig(d_model=d_model, encoder_layers=layers, encoder_attention_heads=heads,
                        encoder_ffn_dim=ffn, decoder_layers=1, decoder_attention_heads=heads,
                        decoder_ffn_dim=ffn, num_mel_bins=80, max_source_positions=1500,
                        max_target_positions=32, vocab_size=128, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2, decoder_start_token_id=1)
    # the layout of the hub's openai/whisper-* checkpoints (model.encoder.* keys)
    model = WhisperForConditionalGeneration(cfg).eval()
    # non-trivial LayerNorm/bias values so a swapped or skipped tensor shows up
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.add_(0.05 * torch.randn_like(p))
            elif p.ndim == 1:
                p.mul_(1 + 0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def saved_whisper(tmp_path_factory):
    torch.set_num_threads(1)
    model = tiny_whisper()
    d = str(tmp_path_factory.mktemp("whisper_tiny"))
    model.save_pretrained(d)
    return model, d


@pytest.fixture()
def tiny_codec():
    from xytok import load_codec

    torch.manual_seed(1)
    return load_codec(os.path.join(GOLDEN, "config.yaml"), None)


def test_whisper_weights_reproduce_hf_encoder(saved_whisper, tiny_codec):
    hf, path = saved_whisper
    before = tiny_codec.semantic_encoder.conv1.weight.clone()
    report = load_whisper_encoder_into(tiny_codec, path)  # local dir, as for a hub name
    assert set(report["towers"]) == {"semantic_encoder", "acoustic_encoder"}
    mapped = report["towers"]["semantic_encoder"]
    assert mapped["positional_embedding"] == "embed_positions.weight"
    assert mapped["layers.1.self_attn.k_proj.weight"] == "layers.1.self_attn.k_proj.weight"
    assert len(mapped) == len(tiny_codec.semantic_encoder.state_dict())
    assert not torch.equal(before, tiny_codec.semantic_encoder.conv1.weight)

    torch.manual_seed(2)
    mel = torch.randn(2, 80, 3000)  # full 30-s input: HF ignores masks, ours masks to the length
    with torch.no_grad():
        ref = hf.get_encoder()(mel).last_hidden_state  # (B, 1500, D)
        for tower in ("semantic_encoder", "acoustic_encoder"):
            ours, lengths = getattr(tiny_codec, tower)(mel, torch.tensor([3000, 3000]))
            assert lengths.tolist() == [1500, 1500]
            torch.testing.assert_close(ours.transpose(1, 2), ref, atol=1e-5, rtol=0)


def test_size_mismatch_is_a_clear_error(tiny_codec, tmp_path):
    wrong = tiny_whisper(d_model=32, layers=3, heads=2, ffn=64)
    before = {k: v.clone() for k, v in tiny_codec.semantic_encoder.state_dict().items()}
    with pytest.raises(WhisperInitError, match=r"d_model=32, 3 layers.*does not fit semantic_encoder "
                                               r"\(d_model=64, 2 layers"):
        load_whisper_encoder_into(tiny_codec, wrong)
    # nothing was modified
    for k, v in tiny_codec.semantic_encoder.state_dict().items():
        assert torch.equal(v, before[k])
    # same shapes, different head count: shapes alone cannot tell, the check must
    with pytest.raises(WhisperInitError, match="attention heads: Whisper 2 vs semantic_encoder 4"):
        load_whisper_encoder_into(tiny_codec, tiny_whisper(heads=2))


def test_missing_transformers_message(monkeypatch, tiny_codec):
    import builtins

    real_import = builtins.__import__

    def no_transformers(name, *a, **k):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(ImportError, match=r"pip install xytok\[hf\]"):
        load_whisper_encoder_into(tiny_codec, "openai/whisper-small")


def test_whisper_init_command_writes_loadable_checkpoint(saved_whisper, tmp_path):
    from xytok import load_codec
    from xytok.whisper_init import main

    hf, path = saved_whisper
    out = str(tmp_path / "init.ckpt")
    cfg = os.path.join(GOLDEN, "config.yaml")
    ckpt = os.path.join(GOLDEN, "model.ckpt")
    assert main(["--config", cfg, "--checkpoint", ckpt, "--whisper", path,
                 "--towers", "acoustic_encoder", "--output", out]) == 0
    codec = load_codec(cfg, out)  # strict load: the released key set is intact
    golden = load_codec(cfg, ckpt)
    hf_enc = hf.get_encoder()
    assert torch.equal(codec.acoustic_encoder.layers[1].fc1.weight, hf_enc.layers[1].fc1.weight)
    assert torch.equal(codec.acoustic_encoder.positional_embedding, hf_enc.embed_positions.weight)
    # the other tower and the rest of the model come from --checkpoint
    assert torch.equal(codec.semantic_encoder.conv1.weight, golden.semantic_encoder.conv1.weight)
    assert torch.equal(codec.vocos.state_dict()[next(iter(codec.vocos.state_dict()))],
                       golden.vocos.state_dict()[next(iter(golden.vocos.state_dict()))])
