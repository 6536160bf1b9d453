"""WavLM-TDNN speaker embeddings: the `wavlm_large_finetune.pth` model of the UniSpeech
speaker-verification recipe (used for SIM by Seed-TTS-eval and SimWhisper-Codec).

Architecture (ECAPA_TDNN_SMALL with a WavLM-large upstream, as in UniSpeech
downstreams/speaker_verification):
- upstream: WavLM on the per-utterance normalised waveform (zero mean, unit variance, as s3prl
  does for WavLM-large); all hidden states (the input of every transformer layer plus the final
  layer-normed output: 25 for WavLM-large) are mixed with softmax(feature_weight);
- + 1e-6, InstanceNorm1d without affine over time;
- layer1: Conv1d(k=5) -> ReLU -> BatchNorm; layer2..4: SE-Res2Blocks (channels 512, k=3,
  dilation 2/3/4, Res2 scale 8, SE bottleneck 128); 1x1 conv of [out2, out3, out4] to 1536 + ReLU;
  attentive statistics pooling (attention bottleneck 128) -> BatchNorm(3072) -> Linear(256).

Checkpoint layout: {"model": state_dict}; the upstream lives under `feature_extract.model.` with
fairseq/s3prl WavLM names, mapped here onto transformers' `WavLMModel` (`_map_upstream_key`);
the head keys (feature_weight, layer1..4, conv, pooling, bn, linear) are loaded as they are. The
upstream config is read off the tensor shapes (layers, width, heads, conv stack, positional conv);
only the pre-LayerNorm ("layer_norm_first") WavLM variant of WavLM-large is supported.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

UPSTREAM_PREFIX = "feature_extract.model."
# Pre-training-only parts of the s3prl/fairseq WavLM that the embedding never uses.
_UNUSED_UPSTREAM = ("mask_emb", "label_embs_concat", "final_proj.", "project_q.", "quantizer.")


class WavLMTdnnError(Exception):
    pass


class Conv1dReluBn(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: int = 1, padding: int = 0, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel_size, padding=padding, dilation=dilation)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x):
        # The recipe normalises after the ReLU.
        return self.bn(F.relu(self.conv(x)))


class Res2Conv1dReluBn(nn.Module):
    """Channels split in `scale` groups; group i (i < scale-1) is convolved after adding the previous
    group's output; the last group passes through unchanged."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int = 8):
        super().__init__()
        if channels % scale:
            raise ValueError(f"channels {channels} not divisible by Res2 scale {scale}")
        self.width = channels // scale
        n = scale - 1 if scale > 1 else 1
        pad = dilation * (kernel_size - 1) // 2
        self.convs = nn.ModuleList(nn.Conv1d(self.width, self.width, kernel_size, padding=pad, dilation=dilation)
                                   for _ in range(n))
        self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(n))

    def forward(self, x):
        chunks = torch.split(x, self.width, dim=1)
        outs, prev = [], None
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            inp = chunks[i] if prev is None else chunks[i] + prev
            prev = bn(F.relu(conv(inp)))
            outs.append(prev)
        outs.extend(chunks[len(self.convs):])
        return torch.cat(outs, dim=1)


class SE_Connect(nn.Module):  # noqa: N801 - name fixed by the checkpoint keys
    def __init__(self, channels: int, bottleneck: int = 128):
        super().__init__()
        self.linear1 = nn.Linear(channels, bottleneck)
        self.linear2 = nn.Linear(bottleneck, channels)

    def forward(self, x):
        gate = torch.sigmoid(self.linear2(F.relu(self.linear1(x.mean(dim=2)))))
        return x * gate.unsqueeze(2)


class SE_Res2Block(nn.Module):  # noqa: N801
    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int = 8, se_bottleneck: int = 128):
        super().__init__()
        self.Conv1dReluBn1 = Conv1dReluBn(channels, channels)
        self.Res2Conv1dReluBn = Res2Conv1dReluBn(channels, kernel_size, dilation, scale)
        self.Conv1dReluBn2 = Conv1dReluBn(channels, channels)
        self.SE_Connect = SE_Connect(channels, se_bottleneck)

    def forward(self, x):
        y = self.Conv1dReluBn2(self.Res2Conv1dReluBn(self.Conv1dReluBn1(x)))
        return x + self.SE_Connect(y)


class AttentiveStatsPool(nn.Module):
    def __init__(self, dim: int, bottleneck: int = 128):
        super().__init__()
        self.linear1 = nn.Conv1d(dim, bottleneck, 1)
        self.linear2 = nn.Conv1d(bottleneck, dim, 1)

    def forward(self, x):  # x: [B, C, T]
        w = torch.softmax(self.linear2(torch.tanh(self.linear1(x))), dim=2)
        mean = (w * x).sum(dim=2)
        var = (w * x * x).sum(dim=2) - mean * mean
        return torch.cat([mean, torch.sqrt(var + 1e-9)], dim=1)


class EcapaTdnnHead(nn.Module):
    """Layer-weighted WavLM hidden states -> speaker embedding (parameter names = checkpoint keys)."""

    def __init__(self, feat_dim: int, n_feats: int, channels: int = 512, emb_dim: int = 256,
                 pooled_channels: int = 1536):
        super().__init__()
        self.feature_weight = nn.Parameter(torch.zeros(n_feats))
        self.instance_norm = nn.InstanceNorm1d(feat_dim)
        self.layer1 = Conv1dReluBn(feat_dim, channels, kernel_size=5, padding=2)
        self.layer2 = SE_Res2Block(channels, 3, dilation=2)
        self.layer3 = SE_Res2Block(channels, 3, dilation=3)
        self.layer4 = SE_Res2Block(channels, 3, dilation=4)
        self.conv = nn.Conv1d(3 * channels, pooled_channels, 1)
        self.pooling = AttentiveStatsPool(pooled_channels)
        self.bn = nn.BatchNorm1d(2 * pooled_channels)
        self.linear = nn.Linear(2 * pooled_channels, emb_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: [L, B, T, D] -> embeddings [B, emb_dim]."""
        if hidden_states.shape[0] != self.feature_weight.numel():
            raise WavLMTdnnError(f"{hidden_states.shape[0]} hidden states for {self.feature_weight.numel()} "
                                 "layer weights")
        w = torch.softmax(self.feature_weight, dim=0).view(-1, 1, 1, 1)
        x = (w * hidden_states).sum(dim=0).transpose(1, 2) + 1e-6
        x = self.instance_norm(x)
        out1 = self.layer1(x)
        out2 = self.layer2(out1)
        out3 = self.layer3(out2)
        out4 = self.layer4(out3)
        out = F.relu(self.conv(torch.cat([out2, out3, out4], dim=1)))
        return self.linear(self.bn(self.pooling(out)))


class WavLMTdnn(nn.Module):
    def __init__(self, upstream_config, channels: int = 512, emb_dim: int = 256, pooled_channels: int = 1536):
        super().__init__()
        from transformers import WavLMModel

        if not upstream_config.do_stable_layer_norm:
            raise WavLMTdnnError("only the pre-LayerNorm WavLM (WavLM-large style) upstream is supported")
        self.upstream = WavLMModel(upstream_config)
        self.head = EcapaTdnnHead(upstream_config.hidden_size, upstream_config.num_hidden_layers + 1,
                                  channels, emb_dim, pooled_channels)

    def hidden_states(self, wav: torch.Tensor) -> torch.Tensor:
        """wav: [B, N] at 16 kHz (one utterance per row, no padding) -> [L, B, T, D]."""
        # s3prl normalises each WavLM-large input waveform (layer_norm over the whole signal).
        wav = F.layer_norm(wav, wav.shape[-1:])
        out = self.upstream(wav, output_hidden_states=True)
        return torch.stack(out.hidden_states, dim=0)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden_states(wav))


# --- checkpoint (UniSpeech layout) ---------------------------------------------------------------

_KEY_RULES = [  # fairseq/s3prl WavLM name -> transformers WavLMModel name
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)$", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)$",
     r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"^layer_norm\.(weight|bias)$", r"feature_projection.layer_norm.\1"),
    (r"^post_extract_proj\.(weight|bias)$", r"feature_projection.projection.\1"),
    (r"^encoder\.pos_conv\.0\.bias$", r"encoder.pos_conv_embed.conv.bias"),
    (r"^encoder\.pos_conv\.0\.weight_g$", r"encoder.pos_conv_embed.conv.weight_g"),
    (r"^encoder\.pos_conv\.0\.weight_v$", r"encoder.pos_conv_embed.conv.weight_v"),
    (r"^encoder\.layer_norm\.(weight|bias)$", r"encoder.layer_norm.\1"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.(k|q|v|out)_proj\.(weight|bias)$",
     r"encoder.layers.\1.attention.\2_proj.\3"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.grep_linear\.(weight|bias)$",
     r"encoder.layers.\1.attention.gru_rel_pos_linear.\2"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.grep_a$", r"encoder.layers.\1.attention.gru_rel_pos_const"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.relative_attention_bias\.weight$",
     r"encoder.layers.\1.attention.rel_attn_embed.weight"),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)$", r"encoder.layers.\1.layer_norm.\2"),
    (r"^encoder\.layers\.(\d+)\.fc1\.(weight|bias)$", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"^encoder\.layers\.(\d+)\.fc2\.(weight|bias)$", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)$", r"encoder.layers.\1.final_layer_norm.\2"),
]
_COMPILED = [(re.compile(a), b) for a, b in _KEY_RULES]


def _map_upstream_key(key: str) -> str | None:
    """s3prl WavLM key (without the prefix) -> transformers key; None for unused pre-training parts."""
    if key.startswith(_UNUSED_UPSTREAM):
        return None
    for pat, repl in _COMPILED:
        if pat.match(key):
            return pat.sub(repl, key)
    raise WavLMTdnnError(f"unknown WavLM upstream key {UPSTREAM_PREFIX}{key}")


def _unmap_upstream_key(key: str) -> str | None:
    """transformers key -> s3prl key (for writing UniSpeech-layout checkpoints, e.g. in tests)."""
    key = key.replace("parametrizations.weight.original0", "weight_g")
    key = key.replace("parametrizations.weight.original1", "weight_v")
    if key == "masked_spec_embed":
        return "mask_emb"
    inverse = [
        (r"^feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
        (r"^feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", r"feature_extractor.conv_layers.\1.2.1."),
        (r"^feature_projection\.layer_norm\.", "layer_norm."),
        (r"^feature_projection\.projection\.", "post_extract_proj."),
        (r"^encoder\.pos_conv_embed\.conv\.", "encoder.pos_conv.0."),
        (r"\.attention\.gru_rel_pos_linear\.", ".self_attn.grep_linear."),
        (r"\.attention\.gru_rel_pos_const$", ".self_attn.grep_a"),
        (r"\.attention\.rel_attn_embed\.", ".self_attn.relative_attention_bias."),
        (r"\.attention\.", ".self_attn."),
        (r"(layers\.\d+)\.layer_norm\.", r"\1.self_attn_layer_norm."),
        (r"\.feed_forward\.intermediate_dense\.", ".fc1."),
        (r"\.feed_forward\.output_dense\.", ".fc2."),
    ]
    for a, b in inverse:
        key = re.sub(a, b, key)
    return key


def to_unispeech_state_dict(model: WavLMTdnn) -> dict:
    """{"model": state_dict} with the key layout of UniSpeech's wavlm_large_finetune.pth."""
    sd = {f"{UPSTREAM_PREFIX}{_unmap_upstream_key(k)}": v for k, v in model.upstream.state_dict().items()}
    sd.update(model.head.state_dict())
    return {"model": sd}


def _upstream_config(up: dict):
    """transformers WavLMConfig read off the s3prl upstream tensor shapes."""
    from transformers import WavLMConfig

    def need(key):
        if key not in up:
            raise WavLMTdnnError(f"checkpoint has no {UPSTREAM_PREFIX}{key}")
        return up[key]

    n_layers = len({int(m.group(1)) for k in up if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    n_conv = len({int(m.group(1)) for k in up if (m := re.match(r"feature_extractor\.conv_layers\.(\d+)\.0\.", k))})
    if not n_layers or not n_conv:
        raise WavLMTdnnError("checkpoint has no WavLM encoder layers / conv feature extractor")
    if "feature_extractor.conv_layers.0.2.1.weight" not in up or "encoder.layer_norm.weight" not in up:
        raise WavLMTdnnError("only the layer-norm WavLM-large upstream (extractor_mode=layer_norm) is supported")
    convs = [need(f"feature_extractor.conv_layers.{i}.0.weight") for i in range(n_conv)]
    kernels = tuple(int(w.shape[2]) for w in convs)
    hidden = int(need("post_extract_proj.weight").shape[0])
    pos_v = need("encoder.pos_conv.0.weight_v")
    rel = need("encoder.layers.0.self_attn.relative_attention_bias.weight")
    return WavLMConfig(
        hidden_size=hidden, num_hidden_layers=n_layers,
        num_attention_heads=int(need("encoder.layers.0.self_attn.grep_a").shape[1]),
        intermediate_size=int(need("encoder.layers.0.fc1.weight").shape[0]),
        conv_dim=tuple(int(w.shape[0]) for w in convs), conv_kernel=kernels,
        # fairseq's WavLM conv stacks stride 5 for the 10-sample kernel and 2 otherwise.
        conv_stride=tuple(5 if k == 10 else 2 for k in kernels),
        conv_bias="feature_extractor.conv_layers.0.0.bias" in up,
        num_conv_pos_embeddings=int(pos_v.shape[2]), num_conv_pos_embedding_groups=hidden // int(pos_v.shape[1]),
        num_buckets=int(rel.shape[0]), max_bucket_distance=800,  # 800: WavLM's max_distance
        feat_extract_norm="layer", do_stable_layer_norm=True,
    )


def load_wavlm_tdnn(path: str | Path, device: str = "cpu") -> WavLMTdnn:
    """Build the model from a UniSpeech speaker-verification checkpoint (e.g. wavlm_large_finetune.pth)."""
    path = Path(path)
    if not path.is_file():
        raise WavLMTdnnError(f"WavLM-TDNN checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle/zip errors of all kinds: name the file
        raise WavLMTdnnError(f"cannot read WavLM-TDNN checkpoint {path}: {type(e).__name__}: {e}") from e
    sd = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise WavLMTdnnError(f"{path}: expected a dict with a 'model' state dict (UniSpeech layout)")
    up = {k[len(UPSTREAM_PREFIX):]: v for k, v in sd.items() if k.startswith(UPSTREAM_PREFIX)}
    head_sd = {k: v for k, v in sd.items() if not k.startswith("feature_extract.")}
    try:
        cfg = _upstream_config(up)
        if "layer1.conv.weight" not in head_sd or "linear.weight" not in head_sd:
            raise WavLMTdnnError("no ECAPA-TDNN head keys (layer1.conv.weight, linear.weight)")
        model = WavLMTdnn(cfg, channels=int(head_sd["layer1.conv.weight"].shape[0]),
                          emb_dim=int(head_sd["linear.weight"].shape[0]),
                          pooled_channels=int(head_sd["conv.weight"].shape[0]) if "conv.weight" in head_sd else 1536)
        target = model.upstream.state_dict()
        mapped = {}
        for k, v in up.items():
            hf = _map_upstream_key(k)
            if hf is None:
                continue
            if hf not in target:  # newer torch: weight norm as parametrizations
                hf = hf.replace("weight_g", "parametrizations.weight.original0").replace(
                    "weight_v", "parametrizations.weight.original1")
            mapped[hf] = v
        mapped.setdefault("masked_spec_embed", target["masked_spec_embed"])  # training-only
        model.upstream.load_state_dict(mapped, strict=True)
        model.head.load_state_dict(head_sd, strict=True)
    except (WavLMTdnnError, RuntimeError, KeyError) as e:
        raise WavLMTdnnError(f"{path}: not a WavLM-TDNN checkpoint in the UniSpeech layout: {e}") from e
    return model.to(device).eval()
