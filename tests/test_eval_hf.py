"""Hugging Face ASR/SIM backends, offline: tiny randomly initialised Whisper, HuBERT-CTC and WavLM
x-vector models saved with save_pretrained. Outputs are garbage; this tests the loading/plumbing."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from xytok.bin.score import main as score_main
from xytok.eval.asr import get_asr_backend
from xytok.eval.sim import get_sim_backend, speaker_similarity


CONV = dict(conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from transformers import (GenerationConfig, HubertConfig, HubertForCTC, WavLMConfig, WavLMForXVector, Wav2Vec2CTCTokenizer,
                              Wav2Vec2FeatureExtractor, Wav2Vec2Processor, WhisperConfig,
                              WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor,
                              WhisperTokenizer)

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf")
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True)

    hub = root / "hubert"
    hub.mkdir()
    chars = ["<pad>", "<s>", "</s>", "<unk>", "|"] + list("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")
    (hub / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(chars)}))
    Wav2Vec2Processor(feature_extractor=fe, tokenizer=Wav2Vec2CTCTokenizer(str(hub / "vocab.json"))).save_pretrained(hub)
    HubertForCTC(HubertConfig(vocab_size=len(chars), pad_token_id=0, **CONV)).save_pretrained(hub)

    wavlm = root / "wavlm"
    WavLMForXVector(WavLMConfig(tdnn_dim=(16, 16), tdnn_kernel=(3, 1), tdnn_dilation=(1, 1), xvector_output_dim=8,
                                num_buckets=16, max_bucket_distance=20, **CONV)).save_pretrained(wavlm)
    fe.save_pretrained(wavlm)

    wh = root / "whisper"
    wh.mkdir()
    (wh / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate([chr(c) for c in range(97, 123)] + ["Ġ"])}))
    (wh / "merges.txt").write_text("#version: 0.2\n")
    tok = WhisperTokenizer(str(wh / "vocab.json"), str(wh / "merges.txt"))
    tok.add_special_tokens({"additional_special_tokens": ["<|endoftext|>", "<|startoftranscript|>", "<|en|>",
                                                          "<|transcribe|>", "<|notimestamps|>"]})
    # timestamp tokens right after <|notimestamps|>, as in the real vocabularies (long-form decoding)
    tok.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok).save_pretrained(wh)
    eot, sot = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|startoftranscript|>")
    model = WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_target_positions=32,
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot))
    # an explicit generation config (one derived from the model config is rebuilt on loading)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        no_timestamps_token_id=tok.convert_tokens_to_ids("<|notimestamps|>"), max_initial_timestamp_index=50)
    model.save_pretrained(wh)
    return root


def test_asr_backends_load_and_transcribe(tiny_models):
    wav = np.random.default_rng(0).normal(size=16000 * 2) * 0.1
    for name in ("hubert", "whisper"):
        asr = get_asr_backend(name, str(tiny_models / name))
        text = asr.transcribe(wav)
        assert isinstance(text, str)
        assert asr.model_name == str(tiny_models / name)


def test_whisper_long_form_sees_all_audio(tiny_models):
    """A 35-s input (LibriSpeech test-clean's longest) is decoded long-form: the encoder gets a second
    window holding the last 5 s, which a 30-s cut would drop (checks coverage, not transcript quality)."""
    asr = get_asr_backend("whisper", str(tiny_models / "whisper"))
    seen = []
    asr.model.model.encoder.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((args[0] if args else kwargs["input_features"]).detach().clone()),
        with_kwargs=True)
    wav = np.zeros(16000 * 35, dtype=np.float32)
    wav[16000 * 31:] = np.random.default_rng(0).normal(size=16000 * 4) * 0.1  # sound only after 30 s
    assert isinstance(asr.transcribe(wav), str)
    assert len(seen) >= 2  # more than one 30-s window
    # a window of pure silence gives a constant log-mel; the tail's sound must reach the encoder
    assert seen[0].std() < 1e-6 and max(float(x.std()) for x in seen[1:]) > 0.1
    seen.clear()
    asr.transcribe(wav[: 16000 * 10])  # short-form: one padded window
    assert seen and all(x.shape[-1] == 3000 for x in seen)


def test_wavlm_sim(tiny_models):
    sim = get_sim_backend("wavlm", str(tiny_models / "wavlm"))
    x = np.random.default_rng(1).normal(size=16000) * 0.1
    assert speaker_similarity(sim, x, x) == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= speaker_similarity(sim, x, x[::-1].copy()) <= 1.0


def test_score_cli_with_hf_backends(tiny_models, tmp_path):
    lib = "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0930.wav"
    spelling = tmp_path / "english.json"
    spelling.write_text(json.dumps({"colour": "color"}))
    x, sr = sf.read(lib)
    sf.write(tmp_path / "a.wav", x, sr)
    (tmp_path / "ref.scp").write_text(f"a {tmp_path}/a.wav\n")
    (tmp_path / "text").write_text("a HE MIGHT EVEN HAVE BEEN MADE AMIABLE HIMSELF\n")
    rc = score_main(["--ref", str(tmp_path / "ref.scp"), "--hyp", str(tmp_path / "ref.scp"), "--out",
                     str(tmp_path / "o"), "--metrics", "sim,wer", "--text", str(tmp_path / "text"),
                     "--asr_backend", "hubert", "--asr_model", str(tiny_models / "hubert"),
                     "--sim_backend", "wavlm", "--sim_model", str(tiny_models / "wavlm"),
                     "--normalizer", "whisper_english", "--normalizer_spelling_map", str(spelling)])
    assert rc == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["wer"]["asr_backend"] == "hubert" and s["wer"]["asr_model"] == str(tiny_models / "hubert")
    assert s["wer"]["normalizer"] == "whisper_english"
    assert s["sim"] == {"backend": "wavlm", "model": str(tiny_models / "wavlm")}
    assert s["metrics"]["sim"]["mean"] == pytest.approx(1.0, abs=1e-5)  # same file on both sides
    assert s["wer"]["recon_vs_asr_ref"]["errors"] == 0  # same audio -> same transcript
    assert s["wer"]["recon_vs_text"]["n_ref"] == 8
