"""Calibration and evaluation inputs: texts from a file or a built-in set, tokenized into batches.

Every fifth text is held out: calibration statistics come from the rest, and the fidelity report
covers both slices. Without a tokenizer (a folder exported from a checkpoint that had none), the
batches are random token ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modernbert_edge.contract import feeds
from modernbert_edge.errors import UserError
from modernbert_edge.runtime.batching import pad

BUILTIN_TEXTS = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "She signed the lease on a small flat in Lisbon last March.",
    "Interest rates rose by a quarter of a point, the central bank said on Thursday.",
    "The patient was given 5 mg of the drug twice a day for two weeks.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "I can't believe the train was late again this morning!",
    "Please reset your password using the link we sent to your email address.",
    "The committee will review all applications received before 1 June 2024.",
    "Mount Everest is 8,849 metres high and lies on the border of Nepal and China.",
    "def add(a, b):\n    return a + b",
    "for i in range(10): print(i * i)",
    "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 3;",
    "const total = items.reduce((sum, x) => sum + x.price, 0);",
    "git commit -m 'fix: handle empty input in the tokenizer'",
    '{"id": 42, "tags": ["alpha", "beta"], "active": true}',
    "The results, shown in Table 3, suggest a strong effect of temperature on yield.",
    "Our support team is available Monday to Friday, 9 am to 5 pm.",
    "He read the whole novel in one night and then slept until noon.",
    "The museum's new wing houses sculptures from the 12th to the 15th century.",
    "To install the package, run pip install numpy and restart the kernel.",
    "A neural network learns weights by gradient descent on a loss function.",
    "The river flooded the lower town after three days of heavy rain.",
    "Contact: jane.doe@example.com, +44 20 7946 0958.",
    "class Stack:\n    def __init__(self):\n        self.items = []",
    'if (err != nil) { return fmt.Errorf("open %s: %w", path, err) }',
    "The orchestra played Beethoven's ninth symphony to a full house.",
    "Shares of the company fell 12% after it cut its annual forecast.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The referee blew the whistle and the crowd erupted in cheers.",
    "Add two cups of flour, a pinch of salt and mix until smooth.",
    "The spacecraft entered orbit around Jupiter after a five-year journey.",
    "Users reported that the app crashes when the screen is rotated.",
    "ERROR 2024-05-01 12:03:44 worker-3 connection refused (retry 4/5)",
    "The law takes effect on January 1 and applies to all employers with ten or more staff.",
    "Why is the sky blue? Because air scatters short wavelengths more strongly.",
    "The cat sat on the windowsill, watching the birds in the garden.",
    "x = np.linspace(0, 1, 100); y = np.sin(2 * np.pi * x)",
    "Le chat dort sur le canapé pendant que la pluie tombe.",
    "The hotel offers free breakfast, a gym, and a rooftop pool.",
)
HELDOUT_EVERY = 5  # every fifth text is held out of the calibration statistics
MAX_LENGTH = 512  # tokens per calibration row, or the model's max_position_embeddings when shorter
BATCH_SIZE = 8


@dataclass(frozen=True)
class Batch:
    input_ids: np.ndarray  # (B, S) int64
    attention_mask: np.ndarray  # (B, S) int64

    def feeds(self) -> dict[str, np.ndarray]:
        return feeds(self.input_ids, self.attention_mask)


@dataclass(frozen=True)
class CalibrationSet:
    source: str  # the file, "built-in", or "random token ids"
    texts: int  # how many texts (or random sequences) in all
    calibration: tuple[Batch, ...]  # statistics and the first fidelity slice
    heldout: tuple[Batch, ...]  # fidelity only
    mask_token_id: int | None  # for fill-mask evaluation; None when the tokenizer has none


def read_texts(path: str | Path) -> list[str]:
    """One text per line, or JSONL objects with a "text" field; blank lines are skipped."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"calibration file {path} is a folder; give a file of texts (one per line, or JSONL).")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"calibration file {path} is not UTF-8 text; give a file of texts.") from None
    except OSError as e:
        raise UserError(f"calibration file {path} could not be read ({e.strerror or e}).") from None
    texts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                if not isinstance(obj.get("text"), str):
                    raise UserError(f"{path} line {n} is a JSON object without a string 'text' field.")
                texts.append(obj["text"])
                continue
        texts.append(line)
    if len(texts) < HELDOUT_EVERY:
        raise UserError(
            f"calibration file {path} has {len(texts)} texts; give at least {HELDOUT_EVERY} (one per line): every "
            f"{HELDOUT_EVERY}th is held out to measure the result."
        )
    return texts


def tokenize(tokenizer_file: Path, texts: list[str], max_length: int) -> tuple[list[np.ndarray], int | None]:
    """Token ids per text (with the tokenizer's special tokens), and the id of its mask token."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.no_padding()
    tok.enable_truncation(max_length)
    seqs = [np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch(texts)]
    mask_id = next((tok.token_to_id(t) for t in ("[MASK]", "<mask>") if tok.token_to_id(t) is not None), None)
    return seqs, mask_id


def batches(
    seqs: list[np.ndarray], pad_id: int, batch_size: int = BATCH_SIZE, max_length: int = MAX_LENGTH
) -> list[Batch]:
    """Right-padded batches of similar lengths, plus one long row of all texts joined (>local window)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = []
    for start in range(0, len(order), batch_size):
        out.append(Batch(*pad([seqs[i] for i in order[start : start + batch_size]], pad_id)))
    joined = np.concatenate(seqs)[:max_length]
    if len(joined) > max(len(s) for s in seqs):
        out.append(Batch(joined[None, :], np.ones((1, len(joined)), dtype=np.int64)))
    return out


def calibration_set(
    model_dir: Path, vocab_size: int, pad_id: int | None, path: str | Path | None = None, seed: int = 0
) -> CalibrationSet:
    """The calibration and held-out batches for the model folder (texts from `path` or built in)."""
    texts = read_texts(path) if path is not None else list(BUILTIN_TEXTS)
    source = str(path) if path is not None else "built-in"
    tokenizer_file = Path(model_dir) / "tokenizer.json"
    pad = 0 if pad_id is None else pad_id
    max_length = min(MAX_LENGTH, max_positions(model_dir))
    if tokenizer_file.is_file():
        seqs, mask_id = tokenize(tokenizer_file, texts, max_length)
    else:
        rng = np.random.default_rng(seed)
        low = min(5, vocab_size - 1)  # leave the usual special-token ids out
        seqs = [rng.integers(low, vocab_size, size=int(rng.integers(4, 48)))[:max_length] for _ in texts]
        mask_id, source = None, "random token ids"
    seqs = [s for s in seqs if len(s)]
    held = [s for i, s in enumerate(seqs) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    calib = [s for i, s in enumerate(seqs) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    if not held or not calib:
        raise UserError(
            f"the calibration texts ({source}) give {len(seqs)} non-empty sequences; give at least {HELDOUT_EVERY}: "
            f"every {HELDOUT_EVERY}th is held out to measure the result."
        )
    return CalibrationSet(
        source,
        len(seqs),
        tuple(batches(calib, pad, max_length=max_length)),
        tuple(batches(held, pad, max_length=max_length)),
        mask_id,
    )


def max_positions(model_dir: Path) -> int:
    """The model folder's max_position_embeddings (rotary caches are that long: no row may be longer)."""
    from modernbert_edge.manifest import read_manifest
    from modernbert_edge.runtime.foreign import is_foreign

    if is_foreign(model_dir):  # an ONNX folder made elsewhere: its config.json says
        name = "config.json"
        value = json.loads((Path(model_dir) / name).read_text(encoding="utf-8")).get("max_position_embeddings")
    else:
        name = "manifest.json"
        value = (read_manifest(model_dir).get("config") or {}).get("max_position_embeddings")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{model_dir}/{name} has no valid max_position_embeddings (got {value!r}).")
    return value


def pad_token_id(model_dir: Path) -> int | None:
    """config.json's pad_token_id, when it is an integer."""
    try:
        value = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("pad_token_id")
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, int) else None


def load_data(model_dir: Path, manifest: dict, calibration: str | Path | None) -> CalibrationSet:
    """The calibration set of a model folder, from its manifest's vocabulary and config.json's pad id."""
    vocab = int(manifest.get("config", {}).get("vocab_size", 0)) or 2
    return calibration_set(model_dir, vocab, pad_token_id(model_dir), calibration)
