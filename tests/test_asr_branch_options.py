"""ASR branch options: greedy decoding bounded by the audio length (an untrained model that never
emits EOS costs a few LM passes per utterance in validation, not max_text_tokens), text dropout."""
from pathlib import Path

import torch


def _spm(root: Path) -> Path:
    import sentencepiece as spm

    corpus = root / "text.txt"
    corpus.write_text("\n".join(["THE BIRCH CANOE SLID ON THE SMOOTH PLANKS", "GLUE THE SHEET TO THE DARK BLUE BACKGROUND",
                                 "IT IS EASY TO TELL THE DEPTH OF A WELL", "THESE DAYS A CHICKEN LEG IS A RARE DISH"] * 5))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(root / "bpe"), vocab_size=30,
                                   model_type="unigram", character_coverage=1.0, bos_id=-1, eos_id=-1,
                                   unk_id=1, pad_id=0, minloglevel=2)
    return root / "bpe.model"


def _branch(tmp_path, **extra):
    from xytok.asr import build_asr_branch

    torch.manual_seed(0)
    conf = {"tokenizer": {"model": str(_spm(tmp_path))}, "max_text_tokens": 40,
            "adapter": {"d_model": 16, "num_layers": 1, "num_heads": 2, "ffn_dim": 32},
            "lm": {"type": "decoder", "d_model": 16, "num_layers": 1, "num_heads": 2, "ffn_dim": 32,
                   "max_positions": 128, "dropout": 0.0}, **extra}
    return build_asr_branch(conf, in_dim=8).eval()


def _count_lm_calls(branch, fn):
    """Run fn with an LM that never emits EOS (the untrained worst case); count its forwards."""
    calls = []
    eos = branch.tokenizer.eos_id

    def never_eos(module, inputs, logits):
        calls.append(1)
        return logits.index_fill(-1, torch.tensor([eos]), -1e4)

    handle = branch.lm.register_forward_hook(never_eos)
    try:
        return fn(), len(calls)
    finally:
        handle.remove()


def test_budget_follows_feature_length(tmp_path):
    branch = _branch(tmp_path, decode_tokens_per_frame=0.5, decode_min_tokens=3)
    budget = branch.decode_budget(torch.tensor([10, 4, 200]))
    assert budget.tolist() == [8, 5, 40]  # ceil(0.5 * n) + 3, capped at max_text_tokens
    assert branch.decode_budget(torch.tensor([200]), max_new_tokens=6).tolist() == [6]


def test_greedy_decode_stops_at_the_budget(tmp_path):
    branch = _branch(tmp_path, decode_tokens_per_frame=0.5, decode_min_tokens=3)
    feats, lengths = torch.randn(2, 8, 10), torch.tensor([10, 4])
    budget = branch.decode_budget(lengths)
    (hyps, calls) = _count_lm_calls(branch, lambda: branch.greedy_decode(feats, lengths))
    assert len(hyps) == 2 and all(isinstance(h, str) for h in hyps)
    assert calls == int(budget.max())  # not max_text_tokens (40)
    # same item alone decodes the same (the batch's other item does not change its tokens)
    alone, calls_alone = _count_lm_calls(branch, lambda: branch.greedy_decode(feats[1:, :, :4], lengths[1:]))
    assert alone[0] == hyps[1] and calls_alone == int(budget[1])  # one LM pass per allowed token


def test_budget_can_be_disabled(tmp_path):
    branch = _branch(tmp_path, decode_tokens_per_frame=None)
    assert branch.decode_budget(torch.tensor([1, 2])).tolist() == [40, 40]


def test_text_dropout_only_in_training(tmp_path):
    branch = _branch(tmp_path, text_dropout=0.5)
    prefix, plen = torch.randn(1, 3, 16), torch.tensor([3])
    tokens = [branch.tokenizer.encode("THE BIRCH CANOE SLID ON THE SMOOTH PLANKS")]
    n = len(tokens[0])
    plain, _, labels = branch._sequences(prefix, plen, tokens)  # eval mode: plain teacher forcing
    assert torch.equal(plain[0, 4:4 + n], branch.lm.embed(torch.tensor(tokens[0])))
    branch.train()
    torch.manual_seed(1)
    dropped, _, labels_train = branch._sequences(prefix, plen, tokens)
    zeroed = (dropped[0, 4:4 + n].abs().sum(-1) == 0)
    assert 0 < int(zeroed.sum()) < n  # some inputs hidden, not all (p = 0.5)
    assert torch.equal(labels, labels_train) and torch.equal(dropped[0, :4], plain[0, :4])  # targets/prefix intact


def test_char_tokenizer_roundtrip():
    from xytok.asr.tokenizers import CharTokenizer

    tok = CharTokenizer()
    ids = tok.encode("THE BOY'S  DOG!")
    assert 0 not in ids and max(ids) < tok.num_pieces and tok.pad_id == 0
    assert tok.decode(ids) == "THE BOY'S DOG"


def test_ctc_head_learns_a_mapping_and_decodes(tmp_path):
    """lm.type ctc (units char / piece): the loss falls when features encode the text, the greedy
    decode returns the transcript, and more than one unit per 12.5 Hz frame is possible (x4 up)."""
    from xytok.asr import build_asr_branch

    torch.manual_seed(0)
    texts = ["THE DOG", "A CAT", "THE CAT", "A DOG"]
    # 3 code frames per utterance; channels 0-3 say which utterance, 4-6 which frame
    feats = torch.zeros(4, 8, 3)
    for i in range(4):
        feats[i, i] = 3.0
        for t in range(3):
            feats[i, 4 + t, t] = 3.0
    lengths = torch.full((4,), 3)
    for units in ("char", "piece"):
        conf = {"tokenizer": {"model": str(_spm(tmp_path))},
                "lm": {"type": "ctc", "units": units, "d_model": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64,
                       "upsample": 4, "dropout": 0.0}}
        head = build_asr_branch(conf, in_dim=8)
        opt = torch.optim.Adam(head.parameters(), lr=1e-2)
        first = None
        for _ in range(200):
            loss, stats = head(feats, lengths, texts)
            first = first if first is not None else loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < 0.1 * first and "asr_acc" not in stats
        head.eval()
        assert head.greedy_decode(feats, lengths) == texts  # 7 characters from 3 code frames
        assert float(head(feats, lengths, texts)[1]["ctc_acc"]) == 1.0  # decode == reference
    bad = {"lm": {"type": "ctc", "units": "word"}}
    try:
        build_asr_branch(bad, in_dim=8)
    except ValueError as e:
        assert "char or piece" in str(e)
    else:
        raise AssertionError("units=word accepted")
