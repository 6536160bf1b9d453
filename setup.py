"""xytok: recipes and training code for XY-Tokenizer (Gong et al., arXiv 2506.23325)."""
from setuptools import find_packages, setup

EXTRAS = {
    # Hugging Face: Whisper initialisation, Qwen2.5 LLM for ASR supervision, whisper/hubert/wavlm scorers.
    "hf": ["transformers>=4.40", "huggingface_hub>=0.23"],  # hub: also egs/emilia shard downloads
    # Evaluation metrics and the offline ASR/SIM backends.
    "eval": [
        "jiwer>=3.0",
        "pesq>=0.0.4",
        "pystoi>=0.4",
        "resemblyzer>=0.1.4",
        "pocketsphinx>=5.0",
        # DNSMOS (xytok.eval.mos): speechmos ships the ONNX models (offline) but declares none of
        # the packages it imports.
        "speechmos>=0.0.1",
        "onnxruntime>=1.20",
        "librosa>=0.10",
        "requests",
        # resemblyzer -> webrtcvad does `import pkg_resources`, removed in setuptools 81.
        "setuptools<81",
    ],
    # load_codec("org/name") / xytok encode --model org/name, and recipe stage 12 (upload).
    "hub": ["huggingface_hub>=0.23"],
    # xytok export-onnx (torch's dynamo exporter needs onnx + onnxscript) and onnxruntime for
    # xytok.onnx_runtime.OnnxCodec / the parity report.
    "onnx": ["onnx>=1.17", "onnxruntime>=1.20", "onnxscript>=0.5"],
    "test": ["pytest>=7"],
}
EXTRAS["all"] = sorted({d for deps in EXTRAS.values() for d in deps})
# Codec baselines' own packages (xytok.codecs), outside "all": speechtokenizer requires torchaudio
# (and its trainer's accelerate/lion-pytorch), which must match the installed torch exactly; next
# to a torch without a matching torchaudio use `pip install --no-deps speechtokenizer einops`
# (inference imports only its model module: torch + einops).
EXTRAS["speechtokenizer"] = ["speechtokenizer>=1.0", "einops"]

setup(
    name="xytok",
    version="0.1.0",
    description="XY-Tokenizer speech codec: training recipes, inference, evaluation",
    packages=find_packages(include=["xytok", "xytok.*"]),
    package_data={"xytok": ["configs/*.yaml"]},  # the released config for weights-only downloads
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "numpy",
        "scipy",
        "soundfile",
        "kaldiio",
        "pyyaml",
        "tqdm",
        "sentencepiece",
        "tensorboard",
        "matplotlib",
        "safetensors>=0.4",  # exported weights (model.safetensors) are written and read by default
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["xytok=xytok.cli:main"]},
)
