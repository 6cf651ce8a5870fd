"""Train a ModernBERT-style byte-level BPE tokenizer on the offline corpus.

    python scripts/train_tokenizer.py --corpus corpus/train.txt --out modernbert_edge/assets/modernbert-mini

Mirrors ModernBERT's tokenizer (OLMo / GPT-2 byte-level BPE, no prefix space, special tokens
`[UNK] [CLS] [SEP] [PAD] [MASK]` with `[MASK]` stripping the space on its left, and a
`[CLS] $A [SEP]` / `[CLS] $A [SEP] $B [SEP]` template) at a small vocabulary. Writes
`tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# Same order as ModernBERT's (ids 50280..50284 there; 0..4 here).
SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "mask_token": "[MASK]",
}
MODEL_MAX_LENGTH = 1024


def special_added_tokens() -> list[AddedToken]:
    """The special tokens with ModernBERT's flags: only `[MASK]` swallows the space before it."""
    return [
        AddedToken(tok, lstrip=(key == "mask_token"), rstrip=False, normalized=False, special=True)
        for key, tok in SPECIAL_TOKENS.items()
    ]


def build_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE tokenizer with ModernBERT's pre-tokenizer and decoder."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    return tok


def add_template(tok: Tokenizer) -> None:
    """`[CLS] $A [SEP]` for one text, `[CLS] $A [SEP] $B [SEP]` for a pair (type ids 0 / 1)."""
    cls, sep = SPECIAL_TOKENS["cls_token"], SPECIAL_TOKENS["sep_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )


def train_tokenizer(corpus: Path, vocab_size: int = 12288, min_frequency: int = 2) -> Tokenizer:
    """Train the BPE merges on `corpus` (one paragraph per line) and attach the template."""
    tok = build_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_added_tokens(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(corpus)], trainer)
    add_template(tok)
    return tok


def _token_entry(key: str) -> dict:
    content = SPECIAL_TOKENS[key]
    lstrip = key == "mask_token"
    return {"content": content, "lstrip": lstrip, "normalized": False, "rstrip": False, "single_word": False}


def tokenizer_config(tok: Tokenizer) -> dict:
    """`tokenizer_config.json` in the shape ModernBERT ships, so AutoTokenizer finds the special tokens."""
    ids = {key: str(tok.token_to_id(t)) for key, t in SPECIAL_TOKENS.items()}
    decoder = {ids[key]: _token_entry(key) | {"special": True} for key in SPECIAL_TOKENS}
    return {
        "added_tokens_decoder": decoder,
        **SPECIAL_TOKENS,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": MODEL_MAX_LENGTH,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def save_tokenizer(tok: Tokenizer, out: Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tok), indent=2) + "\n")
    special_map = {key: _token_entry(key) for key in SPECIAL_TOKENS}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path("corpus/train.txt"))
    ap.add_argument("--out", type=Path, default=Path("modernbert_edge/assets/modernbert-mini"))
    ap.add_argument("--vocab-size", type=int, default=12288)
    args = ap.parse_args()
    if not args.corpus.is_file():
        raise SystemExit(f"{args.corpus} does not exist: run `python scripts/make_corpus.py` first.")
    tok = train_tokenizer(args.corpus, args.vocab_size)
    save_tokenizer(tok, args.out)
    print(f"vocab {tok.get_vocab_size()} -> {args.out}")


if __name__ == "__main__":
    main()
