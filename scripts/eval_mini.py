"""Held-out masked-token top-1 accuracy of the bundled model: PyTorch, exported fp32 and int8.

The held-out rows and the masking are exactly those of `train_mini.py`'s final evaluation (same
packing, same seeded 30 % masking), so the PyTorch figure reproduces training.json's. The ONNX
models are fed the same masked ids and asked for logits at the predicted positions only
(the attention mask marks them with 2).

    python scripts/eval_mini.py [--corpus corpus] [--work /tmp/mini-eval]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

from modernbert_edge.contract import MARK
from modernbert_edge.runtime.session import create_session

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "modernbert_edge" / "assets" / "modernbert-mini"


def _train_module() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("train_mini", ROOT / "scripts" / "train_mini.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_mini"] = module
    spec.loader.exec_module(module)
    return module


def heldout_batches(tm: types.ModuleType, corpus: Path, seq_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(masked ids (B, T), labels (B, T)) as train_mini.evaluate builds them."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(BUNDLED / "tokenizer.json"))
    ids = tm.special_ids(tok)
    recipe = tm.Recipe(**json.loads((BUNDLED / "training.json").read_text())["recipe"])
    rows = tm.pack(tm.encode_lines(tok, corpus / "heldout.txt"), seq_len, ids["cls"], ids["sep"])
    gen = torch.Generator().manual_seed(recipe.seed + 12345)
    out = []
    for i in range(0, len(rows), 16):
        masked, labels = tm.mask_tokens(rows[i : i + 16], recipe.mask_rate, gen, ids, ids["vocab"])
        out.append((masked.numpy(), labels.numpy()))
    return out


def onnx_accuracy(folder: Path, batches: list, ignore: int) -> float:
    session = create_session(folder / "model.onnx")
    correct = total = 0
    for masked, labels in batches:
        picked = labels.reshape(-1) != ignore
        feeds = {"input_ids": masked, "attention_mask": np.where(picked.reshape(masked.shape), MARK, 1)}
        logits = session.run(None, feeds)[0][0]  # (M, V)
        correct += int((logits.argmax(-1) == labels.reshape(-1)[picked]).sum())
        total += int(picked.sum())
    return correct / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT / "corpus")
    ap.add_argument("--work", type=Path, default=Path("/tmp/mini-eval"))
    ap.add_argument("--out", type=Path, default=BUNDLED / "eval.json")
    args = ap.parse_args()
    if not (args.corpus / "heldout.txt").is_file():
        sys.exit(f"{args.corpus}/heldout.txt is missing: run python scripts/make_corpus.py first.")

    from modernbert_edge.export.exporter import export
    from modernbert_edge.quantize.quantizer import quantize

    fp32, int8 = args.work / "fp32", args.work / "int8"
    export(str(BUNDLED), fp32, overwrite=True, log=lambda m: print(m, file=sys.stderr))
    quantize(fp32, int8, mode="int8", overwrite=True, log=lambda m: print(m, file=sys.stderr))

    tm = _train_module()
    model = tm.ModernBertForMaskedLM.from_pretrained(str(BUNDLED)).eval()
    results = {}
    for seq_len in (128, 512):
        batches = heldout_batches(tm, args.corpus, seq_len)
        correct = total = 0
        with torch.no_grad():
            for masked, labels in batches:
                logits = model(input_ids=torch.from_numpy(masked)).logits.numpy()
                picked = labels != tm.IGNORE
                correct += int((logits[picked].argmax(-1) == labels[picked]).sum())
                total += int(picked.sum())
        results[str(seq_len)] = {
            "masked_tokens": total,
            "pytorch": correct / total,
            "onnx_fp32": onnx_accuracy(fp32, batches, tm.IGNORE),
            "onnx_int8": onnx_accuracy(int8, batches, tm.IGNORE),
        }
        print(f"{seq_len} tokens: " + ", ".join(f"{k} {v:.4f}" for k, v in results[str(seq_len)].items()))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
