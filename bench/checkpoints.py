"""Random ModernBERT checkpoints and small tokenizers, for tests, benchmarks and the quickstart.

No pretrained weights can be downloaded here, so everything that needs a checkpoint builds one:
transformers' ModernBertConfig / ModernBertFor* with random weights, saved with
save_pretrained, and a byte-level BPE tokenizer trained on text written here, with ModernBERT's
special tokens. Needs the dev extra (torch, transformers).

    python -m modernbert_edge.bench.checkpoints OUT_DIR [--task fill-mask] [--size tiny|base]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from modernbert_edge.timing import sample_text

if TYPE_CHECKING:
    import torch

SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]  # ids 0..4

SIZES = {
    # vocab is set from the tokenizer for "tiny"
    "tiny": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=2, local_attention=16),
    "base": dict(
        vocab_size=50368, hidden_size=768, intermediate_size=1152, num_hidden_layers=22, num_attention_heads=12
    ),
}


def train_tokenizer(out_dir: Path, vocab_size: int = 512, max_length: int = 8192) -> int:
    """Write tokenizer.json / tokenizer_config.json / special_tokens_map.json; returns the vocab size."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sample_text(), trainer)
    tok.add_special_tokens([AddedToken("[MASK]", lstrip=True, normalized=False)])
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    special = {"unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]"}
    special["mask_token"] = "[MASK]"
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],  # as ModernBERT's tokenizer: no token_type_ids
        **special,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    return tok.get_vocab_size()


def to_flat_config(config: dict) -> dict:
    """Rewrite a transformers-5 config.json into the older flat format real checkpoints carry."""
    flat = {k: v for k, v in config.items() if k not in ("layer_types", "rope_parameters")}
    types = config["layer_types"]
    every = next((i for i, t in enumerate(types) if i and t == "full_attention"), len(types))
    flat["global_attn_every_n_layers"] = every
    rope = config.get("rope_parameters") or {}
    flat["global_rope_theta"] = rope.get("full_attention", {}).get("rope_theta", 160000.0)
    flat["local_rope_theta"] = rope.get("sliding_attention", {}).get("rope_theta", 10000.0)
    flat["rope_scaling"] = None
    return flat


def make_checkpoint(
    out_dir: Path | str,
    task: str = "fill-mask",
    size: str = "tiny",
    flat_config: bool = False,
    tokenizer: bool = True,
    seed: int = 0,
    outlier_channels: int = 0,
    outlier_scale: float = 30.0,
    outlier_ln_gain: float = 10.0,
    **overrides: object,
) -> Path:
    """Save a random ModernBERT checkpoint for `task` in out_dir (config, safetensors, tokenizer).

    outlier_channels > 0 makes a few residual-stream channels about `outlier_scale` times larger
    than the rest, as in trained language models: those channels are scaled in the token
    embeddings and in the rows of each output projection that writes them. The LayerNorm weights
    of the layers scale them `outlier_ln_gain` times more, so the activations of the int8
    projections carry outliers of outlier_scale x outlier_ln_gain; the projections that read them
    (Wqkv, Wi) get those input rows divided by the gain, as trained weights are small where their
    input is large. Without that, the random model is chaotic (a one-off measurement, 2026-11-27:
    1 % weight noise moved tokens to cosines of 0.55-0.74 at a gain of 10) and no quantization
    could be judged on it.
    """
    import torch
    import transformers

    from modernbert_edge.contract import HEADS

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params: dict = dict(SIZES[size])
    if tokenizer:
        vocab = train_tokenizer(out_dir, vocab_size=512)
        if size == "tiny":
            params["vocab_size"] = vocab
    params.setdefault("vocab_size", 512)
    params.update(pad_token_id=3, cls_token_id=1, sep_token_id=2, bos_token_id=1, eos_token_id=2)
    params.update(overrides)
    if task in ("text-classification", "token-classification"):
        params.setdefault("num_labels", 3)
        labels = ["NEG", "NEU", "POS"] if task == "text-classification" else ["O", "B-ENT", "I-ENT"]
        n = params["num_labels"]
        params.setdefault("id2label", {i: labels[i] if i < len(labels) else f"LABEL_{i}" for i in range(n)})
        params.setdefault("label2id", {v: k for k, v in params["id2label"].items()})
    torch.manual_seed(seed)
    config = transformers.ModernBertConfig(**params)
    model = getattr(transformers, HEADS[task].architecture)(config).eval()
    if outlier_channels:
        _add_outliers(model, outlier_channels, outlier_scale, outlier_ln_gain, seed)
    model.save_pretrained(out_dir)
    if flat_config:
        path = out_dir / "config.json"
        path.write_text(json.dumps(to_flat_config(json.loads(path.read_text())), indent=2))
    return out_dir


def _add_outliers(model: torch.nn.Module, n: int, scale: float, ln_gain: float, seed: int) -> None:
    import torch

    base = model.model if hasattr(model, "model") else model
    g = torch.Generator().manual_seed(seed + 1)
    channels = torch.randperm(base.config.hidden_size, generator=g)[:n]
    with torch.no_grad():
        base.embeddings.tok_embeddings.weight[:, channels] *= scale
        for layer in base.layers:
            layer.attn.Wo.weight[channels, :] *= scale
            layer.mlp.Wo.weight[channels, :] *= scale
            readers = {"attn_norm": layer.attn.Wqkv, "mlp_norm": layer.mlp.Wi}
            for norm_name, reader in readers.items():
                norm = getattr(layer, norm_name)
                if not isinstance(norm, torch.nn.LayerNorm):  # layer 0 reads the embeddings' norm directly
                    continue
                norm.weight[channels] *= ln_gain
                if norm.bias is not None:
                    norm.bias[channels] *= ln_gain
                reader.weight[:, channels] /= ln_gain


def main() -> None:
    import argparse

    from modernbert_edge.contract import TASKS

    parser = argparse.ArgumentParser(description="Save a random ModernBERT checkpoint with a small tokenizer.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--task", default="fill-mask", choices=sorted(TASKS))
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--flat-config", action="store_true", help="write the older flat config.json format")
    parser.add_argument("--outlier-channels", type=int, default=0, help="residual channels made large (stress)")
    parser.add_argument("--outlier-scale", type=float, default=30.0, help="how much larger than the rest")
    parser.add_argument("--outlier-ln-gain", type=float, default=10.0, help="extra scale in the layers' LayerNorms")
    args = parser.parse_args()
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        parser.exit(2, "error: this needs torch and transformers: pip install 'modernbert-edge[dev]'.\n")
    make_checkpoint(
        args.out_dir,
        args.task,
        args.size,
        flat_config=args.flat_config,
        outlier_channels=args.outlier_channels,
        outlier_scale=args.outlier_scale,
        outlier_ln_gain=args.outlier_ln_gain,
    )
    print(args.out_dir)


if __name__ == "__main__":
    main()
