"""ASR branch of stage-1 training: quantised features -> adapter -> causal LM -> transcript.

build_asr_branch(config) picks the LM backend:
  lm.type: decoder  small Transformer decoder trained from scratch + sentencepiece (offline default)
  lm.type: hf       Hugging Face causal LM by name/path (+ its tokenizer), frozen by default
  lm.type: ctc      CTC head on the quantised features (debug stand-in for the LLM; xytok/asr/ctc.py)
"""
from xytok.asr.branch import ASRBranch, build_asr_branch  # noqa: F401
