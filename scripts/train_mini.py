"""Pretrain a small ModernBERT (masked LM) from scratch on the offline corpus, on CPU.

    nice -n 10 python scripts/train_mini.py --out modernbert_edge/assets/modernbert-mini

Builds `corpus/` (scripts/make_corpus.py) and the tokenizer (scripts/train_tokenizer.py) when they
are missing, then trains a `ModernBertForMaskedLM` with the real architecture (alternating global /
local attention, GeGLU, two RoPE thetas) at a small size: MLM with 30 % masking (80/10/10),
AdamW with linear warmup and cosine decay, sequences packed to 128 tokens and a final phase at 512
tokens so the local window (128) matters. Writes config.json, model.safetensors, the tokenizer
files and training.json (the recipe and the held-out masked-token top-1 accuracy) into --out.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tokenizers
import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer
from transformers import ModernBertConfig, ModernBertForMaskedLM

SCRIPTS = Path(__file__).resolve().parent
IGNORE = -100  # label of positions that are not predicted
REPLAN_EVERY = 25  # steps between speed measurements when a --max-minutes budget is set
N_SPECIAL = 5  # ids 0..4 are [UNK] [CLS] [SEP] [PAD] [MASK]; never drawn as random replacements


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the weights; recorded verbatim in training.json."""

    seed: int = 0
    steps: int = 2000  # total optimizer steps (phase 1 + phase 2)
    batch: int = 16  # sequences per step in phase 1
    seq_len: int = 128  # phase 1 packed length
    long_seq_len: int = 512  # phase 2 packed length (batch shrinks to keep tokens per step)
    long_frac: float = 0.1  # fraction of steps in phase 2
    lr: float = 1.5e-3
    min_lr_frac: float = 0.05  # cosine decays to lr * min_lr_frac
    warmup_frac: float = 0.06
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    mask_rate: float = 0.30
    hidden_size: int = 256
    intermediate_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 4

    @property
    def long_steps(self) -> int:
        return round(self.steps * self.long_frac)

    @property
    def long_batch(self) -> int:
        return max(1, self.batch * self.seq_len // self.long_seq_len)


# ---------------------------------------------------------------- data


def ensure_inputs(corpus_dir: Path, tok_dir: Path, vocab_size: int) -> None:
    """Run the corpus and tokenizer scripts when their outputs are missing."""
    if not (corpus_dir / "train.txt").is_file() or not (corpus_dir / "heldout.txt").is_file():
        cmd = [sys.executable, str(SCRIPTS / "make_corpus.py"), "--out", str(corpus_dir)]
        subprocess.run(cmd, check=True)
    if not (tok_dir / "tokenizer.json").is_file():
        cmd = [sys.executable, str(SCRIPTS / "train_tokenizer.py"), "--corpus", str(corpus_dir / "train.txt")]
        subprocess.run([*cmd, "--out", str(tok_dir), "--vocab-size", str(vocab_size)], check=True)


def encode_lines(tok: Tokenizer, path: Path) -> list[np.ndarray]:
    """Token ids of each non-empty line (paragraph), without special tokens."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch(lines, add_special_tokens=False)]


def pack(paragraphs: list[np.ndarray], seq_len: int, cls_id: int, sep_id: int) -> torch.Tensor:
    """Concatenate `p1 [SEP] p2 [SEP] ...` and cut it into `[CLS] + (seq_len - 1)` rows; drops the tail."""
    sep = np.asarray([sep_id], dtype=np.int64)
    stream = np.concatenate([x for p in paragraphs for x in (p, sep)])
    n = len(stream) // (seq_len - 1)
    body = torch.from_numpy(stream[: n * (seq_len - 1)].reshape(n, seq_len - 1))  # (N, T-1)
    return torch.cat([torch.full((n, 1), cls_id, dtype=torch.long), body], dim=1)  # (N, T)


def epoch_rows(paragraphs: list[np.ndarray], seq_len: int, epoch: int, seed: int, ids: dict) -> torch.Tensor:
    """The packed rows of one epoch: paragraphs in a fresh seeded order, so contexts differ per epoch."""
    order = np.random.default_rng([seed, epoch]).permutation(len(paragraphs))
    rows = pack([paragraphs[i] for i in order], seq_len, ids["cls"], ids["sep"])
    return rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed * 1000 + epoch))]


def batches(
    paragraphs: list[np.ndarray], seq_len: int, batch: int, seed: int, ids: dict, start_epoch: int = 0
) -> Iterator[torch.Tensor]:
    """Endless stream of (B, T) id batches, epoch after epoch."""
    epoch = start_epoch
    while True:
        rows = epoch_rows(paragraphs, seq_len, epoch, seed, ids)
        for i in range(0, len(rows) - batch + 1, batch):
            yield rows[i : i + batch]
        epoch += 1


def mask_tokens(
    input_ids: torch.Tensor, rate: float, gen: torch.Generator, ids: dict, vocab: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick `rate` of the non-special tokens; 80 % -> [MASK], 10 % random, 10 % kept.

    Returns (masked input ids, labels) with labels = IGNORE where nothing is predicted. (B, T) each.
    """
    special = input_ids < N_SPECIAL  # [CLS], [SEP], [PAD] ... are never predicted
    picked = (torch.rand(input_ids.shape, generator=gen) < rate) & ~special
    labels = torch.where(picked, input_ids, torch.full_like(input_ids, IGNORE))
    action = torch.rand(input_ids.shape, generator=gen)
    randoms = torch.randint(N_SPECIAL, vocab, input_ids.shape, generator=gen)
    masked = torch.where(picked & (action < 0.8), torch.full_like(input_ids, ids["mask"]), input_ids)
    masked = torch.where(picked & (action >= 0.8) & (action < 0.9), randoms, masked)
    return masked, labels


# ---------------------------------------------------------------- model


def build_config(recipe: Recipe, tok: Tokenizer) -> ModernBertConfig:
    """ModernBERT's architecture at a small size; vocab rounded up to a multiple of 64 like ModernBERT."""
    vocab = math.ceil(tok.get_vocab_size() / 64) * 64
    tid = tok.token_to_id
    return ModernBertConfig(
        vocab_size=vocab,
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads,
        hidden_activation="gelu",  # GeGLU: Wi projects to 2 * intermediate, gelu(gate) * up
        max_position_embeddings=1024,
        global_attn_every_n_layers=3,
        local_attention=128,
        global_rope_theta=160_000.0,
        local_rope_theta=10_000.0,
        pad_token_id=tid("[PAD]"),
        cls_token_id=tid("[CLS]"),
        sep_token_id=tid("[SEP]"),
        bos_token_id=tid("[CLS]"),
        eos_token_id=tid("[SEP]"),
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )


def mlm_logits(model: ModernBertForMaskedLM, masked: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logits at the predicted positions only, (M, V): the head never runs on unmasked tokens."""
    hidden = model.model(input_ids=masked).last_hidden_state  # (B, T, H); packed rows have no padding
    return model.decoder(model.head(hidden[labels != IGNORE]))  # (M, V)


def lr_at(step: int, recipe: Recipe) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_frac at the last step."""
    warmup = max(1, round(recipe.warmup_frac * recipe.steps))
    if step < warmup:
        return recipe.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, recipe.steps - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return recipe.lr * (recipe.min_lr_frac + (1 - recipe.min_lr_frac) * cosine)


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms and biases."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas, eps=1e-6)


# ---------------------------------------------------------------- train / eval


@torch.no_grad()
def evaluate(model: ModernBertForMaskedLM, rows: torch.Tensor, recipe: Recipe, ids: dict, device: str) -> dict:
    """Masked-token top-1 accuracy and loss on packed held-out rows, masking with a fixed seed."""
    model.eval()
    gen = torch.Generator().manual_seed(recipe.seed + 12345)
    correct = total = 0
    loss_sum = 0.0
    for i in range(0, len(rows), 16):
        masked, labels = mask_tokens(rows[i : i + 16], recipe.mask_rate, gen, ids, ids["vocab"])
        masked, labels = masked.to(device), labels.to(device)
        logits = mlm_logits(model, masked, labels)
        target = labels[labels != IGNORE]
        correct += (logits.argmax(-1) == target).sum().item()
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        total += target.numel()
    model.train()
    return {"top1": correct / total, "loss": loss_sum / total, "masked_tokens": total, "rows": len(rows)}


def train_step(
    model: ModernBertForMaskedLM,
    opt: torch.optim.Optimizer,
    batch: torch.Tensor,
    gen: torch.Generator,
    recipe: Recipe,
    ids: dict,
    device: str,
) -> float:
    """One optimizer step on a freshly masked (B, T) batch; returns the loss."""
    masked, labels = mask_tokens(batch, recipe.mask_rate, gen, ids, ids["vocab"])
    logits = mlm_logits(model, masked.to(device), labels.to(device))
    loss = F.cross_entropy(logits, labels[labels != IGNORE].to(device))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
    opt.step()
    return loss.item()


def fit_steps(recipe: Recipe, step: int, sec_per_step: float, seconds_left: float) -> Recipe:
    """Shrink the total step count (never grow it) so the remaining steps fit in `seconds_left`.

    The machine is shared, so the speed is re-measured during phase 1 and the plan re-fitted.
    """
    long_cost = 1.3  # a 512-token step costs about this much more than a 128-token one
    total = (max(0.0, seconds_left) / sec_per_step + step) / (1 + recipe.long_frac * (long_cost - 1))
    total = max(step + 1, int(total))
    if total >= recipe.steps:
        return recipe
    log(f"budget: {sec_per_step:.2f} s/step at step {step}, steps {recipe.steps} -> {total}")
    return Recipe(**{**asdict(recipe), "steps": total})


def log(msg: str) -> None:
    print(msg, flush=True)


def train(
    recipe: Recipe,
    tok: Tokenizer,
    train_paras: list[np.ndarray],
    held_rows: torch.Tensor,
    device: str,
    max_minutes: float | None,
    replans: dict[int, int] | None = None,
) -> tuple[ModernBertForMaskedLM, Recipe, list[dict]]:
    """Run both phases; returns the model, the recipe actually run (steps may shrink) and a loss log.

    `replans` ({step: new total}) replays the step-count cuts of an earlier budgeted run exactly.
    """
    torch.manual_seed(recipe.seed)
    model = ModernBertForMaskedLM(build_config(recipe, tok)).to(device)
    model.train()
    opt = make_optimizer(model, recipe)
    ids = special_ids(tok)
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    short = batches(train_paras, recipe.seq_len, recipe.batch, recipe.seed, ids)
    long = batches(train_paras, recipe.long_seq_len, recipe.long_batch, recipe.seed, ids, start_epoch=1000)
    history, t0, running = [], time.time(), []
    step, t_window = 0, time.time()
    while step < recipe.steps:
        in_long = step >= recipe.steps - recipe.long_steps
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe)
        running.append(train_step(model, opt, next(long if in_long else short), gen, recipe, ids, device))
        step += 1
        planned = recipe.steps
        if replans and step in replans:
            recipe = Recipe(**{**asdict(recipe), "steps": replans[step]})
        elif max_minutes is not None and step % REPLAN_EVERY == 0 and not in_long:
            seconds_left = max_minutes * 60 - (time.time() - t0)
            recipe = fit_steps(recipe, step, (time.time() - t_window) / REPLAN_EVERY, seconds_left)
            t_window = time.time()
        if recipe.steps != planned:
            history.append({"step": step, "replanned_steps": recipe.steps})
        if step % 50 == 0 or step == recipe.steps:
            entry = {"step": step, "loss": float(np.mean(running)), "lr": lr_at(step - 1, recipe)}
            entry["seq_len"] = recipe.long_seq_len if in_long else recipe.seq_len
            entry["min"] = (time.time() - t0) / 60
            if step % 250 == 0:
                t_eval = time.time()
                entry["heldout_top1"] = evaluate(model, held_rows, recipe, ids, device)["top1"]
                t_window += time.time() - t_eval  # keep evaluation out of the speed measurement
            history.append(entry)
            running = []
            log(json.dumps(entry))
    return model, recipe, history


def special_ids(tok: Tokenizer) -> dict:
    return {
        "cls": tok.token_to_id("[CLS]"),
        "sep": tok.token_to_id("[SEP]"),
        "mask": tok.token_to_id("[MASK]"),
        "vocab": tok.get_vocab_size(),
    }


# ---------------------------------------------------------------- save


def add_legacy_config_keys(out: Path) -> None:
    """Also write the config keys that ModernBERT-base's config.json uses (transformers < 5 reads those)."""
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    cfg |= {"global_attn_every_n_layers": 3, "global_rope_theta": 160_000.0, "local_rope_theta": 10_000.0}
    cfg |= {"model_type": "modernbert", "architectures": ["ModernBertForMaskedLM"]}
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def training_record(
    args: argparse.Namespace,
    recipe: Recipe,
    model: ModernBertForMaskedLM,
    scores: dict,
    train_minutes: float,
    tokens: tuple[int, int],
    history: list[dict],
) -> dict:
    """The recipe, data files, versions and held-out scores that go into training.json."""
    meta = args.corpus / "meta.json"
    return {
        "recipe": asdict(recipe),
        "heldout_mlm_top1": scores[str(recipe.seq_len)]["top1"],
        "heldout": scores,
        "data": {
            "train": file_info(args.corpus / "train.txt"),
            "heldout": file_info(args.corpus / "heldout.txt"),
            "train_tokens": tokens[0],
            "heldout_tokens": tokens[1],
            "source": json.loads(meta.read_text()) if meta.is_file() else None,
        },
        "parameters": sum(p.numel() for p in model.parameters()),
        "initial_steps": args.steps,
        "replans": [[e["step"], e["replanned_steps"]] for e in history if "replanned_steps" in e],
        "rebuild_exact": rebuild_command(args, history),
        "wall_minutes": round(train_minutes, 2),
        "threads": args.threads,
        "device": args.device,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "python": platform.python_version(),
        },
        "machine": platform.processor() or platform.machine(),
        "command": " ".join(sys.argv),
        "loss_log": history,
    }


def file_info(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    return {"path": path.as_posix(), "lines": text.count("\n"), "bytes": len(text.encode("utf-8"))}


def rebuild_command(args: argparse.Namespace, history: list[dict]) -> str:
    """The command that replays this run step for step (its budget cuts become fixed --replans)."""
    replans = ",".join(f"{e['step']}:{e['replanned_steps']}" for e in history if "replanned_steps" in e)
    cmd = f"python scripts/train_mini.py --out {args.out} --steps {args.steps} --batch {args.batch}"
    cmd += f" --lr {args.lr} --seed {args.seed} --threads {args.threads}"
    return cmd + (f" --replans {replans}" if replans else "")


def parse_replans(text: str) -> dict[int, int]:
    """`"100:1342,150:1269"` -> {100: 1342, 150: 1269}."""
    pairs = [item.split(":") for item in text.split(",") if item.strip()]
    return {int(step): int(total) for step, total in pairs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("modernbert_edge/assets/modernbert-mini"))
    ap.add_argument("--corpus", type=Path, default=Path("corpus"))
    ap.add_argument("--steps", type=int, default=Recipe.steps)
    ap.add_argument("--batch", type=int, default=Recipe.batch)
    ap.add_argument("--lr", type=float, default=Recipe.lr)
    ap.add_argument("--seed", type=int, default=Recipe.seed)
    ap.add_argument("--max-minutes", type=float, default=None, help="shrink --steps to finish in time")
    ap.add_argument("--replans", default="", help="replay step-count cuts, e.g. 100:1342,150:1269")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vocab-size", type=int, default=12288)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    recipe = Recipe(seed=args.seed, steps=args.steps, batch=args.batch, lr=args.lr)
    args.out.mkdir(parents=True, exist_ok=True)
    ensure_inputs(args.corpus, args.out, args.vocab_size)
    tok = Tokenizer.from_file(str(args.out / "tokenizer.json"))
    t_start = time.time()
    train_paras = encode_lines(tok, args.corpus / "train.txt")
    held_paras = encode_lines(tok, args.corpus / "heldout.txt")
    ids = special_ids(tok)
    held_rows = pack(held_paras, recipe.seq_len, ids["cls"], ids["sep"])
    n_tokens = (int(sum(len(p) for p in train_paras)), int(sum(len(p) for p in held_paras)))
    log(f"train tokens {n_tokens[0]}, heldout tokens {n_tokens[1]}")
    model, recipe, history = train(
        recipe, tok, train_paras, held_rows, args.device, args.max_minutes, parse_replans(args.replans)
    )
    train_minutes = (time.time() - t_start) / 60
    held = {n: pack(held_paras, n, ids["cls"], ids["sep"]) for n in (recipe.seq_len, recipe.long_seq_len)}
    scores = {str(n): evaluate(model, rows, recipe, ids, args.device) for n, rows in held.items()}
    log(json.dumps({"heldout": scores}))

    model.to("cpu").save_pretrained(args.out, safe_serialization=True)
    add_legacy_config_keys(args.out)
    record = training_record(args, recipe, model, scores, train_minutes, n_tokens, history)
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    top1, params = record["heldout_mlm_top1"], record["parameters"]
    log(f"saved {args.out} ({params / 1e6:.2f} M params), held-out top-1 {top1:.4f}")


if __name__ == "__main__":
    main()
