"""Proof that a written model folder runs, before export reports success.

The runtime loads it (manifest, config, tokenizer whose ids fit the vocabulary, graph), the
tokenizer's JSON side files parse, and one probe row through the written model gives finite
outputs (a NaN rope_theta or norm_eps, or NaN weights, show up here). Torch-free: this runs with
or without the PyTorch parity check, which then runs on the model loaded here (one session).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modernbert_edge.errors import UserError

if TYPE_CHECKING:
    from modernbert_edge.runtime.model import Model

PROBE_TEXT = "The quick brown fox jumps over the lazy dog."
JSON_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def prove_folder(folder: Path, vocab_size: int, max_positions: int) -> Model:
    """The model folder loaded by the runtime; UserError unless it loads and gives finite outputs."""
    from modernbert_edge.runtime.loader import load

    for name in JSON_SIDE_FILES:
        path = folder / name
        if path.is_file():
            try:
                ok = isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                ok = False
            if not ok:
                raise UserError(f"the checkpoint's {name} is not a JSON object; fix or remove it.")
    model = load(folder)  # raises the runtime's own sentence for a folder it cannot use

    ids = _probe_ids(folder, vocab_size)[:, :max_positions]  # (1, S)
    for name, value in model.run(ids, np.ones_like(ids)).items():
        if not np.all(np.isfinite(value)):
            raise UserError(
                f"the exported model's {name} is not finite on a probe sentence: check the checkpoint's "
                "weights and config.json (norm_eps, rope_theta); nothing was written."
            )
    return model


def _probe_ids(folder: Path, vocab_size: int) -> np.ndarray:
    path = folder / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(str(path)).encode(PROBE_TEXT).ids
        if ids:
            return np.asarray([ids], dtype=np.int64)
    return np.arange(min(vocab_size, 12), dtype=np.int64)[None, :]
