"""The Hugging Face LM path of the ASR branch, offline: a tiny Qwen2 + a tokenizer built locally."""
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="HF backend needs the [hf] extra")

SENTENCES = ["the birch canoe slid on the smooth planks", "glue the sheet to the dark blue background",
             "it is easy to tell the depth of a well"]


@pytest.fixture(scope="module")
def tiny_qwen_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    d = tmp_path_factory.mktemp("tiny_qwen")
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["<unk>", "<|endoftext|>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.save_pretrained(d)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    Qwen2ForCausalLM(cfg).save_pretrained(d)
    return d


def test_hf_branch_trains_adapter_only_and_decodes(tiny_qwen_dir):
    from xytok.asr import build_asr_branch

    torch.manual_seed(0)
    branch = build_asr_branch({"lm": {"type": "hf", "name_or_path": str(tiny_qwen_dir)},
                               "adapter": {"d_model": 16, "num_layers": 1, "num_heads": 2, "ffn_dim": 32},
                               "max_text_tokens": 12}, in_dim=24)
    assert branch.lm.hidden_size == 32
    assert not any(p.requires_grad for p in branch.lm.parameters())  # frozen by default (paper)
    feats, lengths = torch.randn(2, 24, 7), torch.tensor([7, 4])
    loss, stats = branch(feats, lengths, SENTENCES[:2])
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert branch.adapter.output_proj.weight.grad is not None and branch.start_embed.grad is not None
    # a frozen hub LM stays out of our checkpoints and its absence is accepted on load
    sd = branch.state_dict()
    assert not any(k.startswith("lm.") for k in sd) and any(k.startswith("adapter.") for k in sd)
    branch.load_state_dict(sd)
    # a few steps on one utterance lower the loss through the adapter alone; greedy decoding returns text
    opt = torch.optim.Adam([p for p in branch.parameters() if p.requires_grad], lr=1e-2)
    first = None
    for _ in range(30):
        loss, _ = branch(feats[:1], lengths[:1], SENTENCES[:1])
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < first - 0.1
    hyp = branch.greedy_decode(feats[:1], lengths[:1], max_new_tokens=5)
    assert isinstance(hyp[0], str) and len(hyp[0].split()) <= 5


def test_hf_lm_can_be_unfrozen(tiny_qwen_dir):
    from xytok.asr import build_asr_branch

    branch = build_asr_branch({"lm": {"type": "hf", "name_or_path": str(tiny_qwen_dir), "freeze": False}}, in_dim=8)
    assert all(p.requires_grad for p in branch.lm.parameters())
    assert any(k.startswith("lm.model.") for k in branch.state_dict())
