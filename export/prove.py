"""Proof that a written model folder runs, before export reports success.

The runtime loads it (manifest, config, tokenizer whose ids fit the vocabulary, graph), the
tokenizer's JSON side files parse, and one probe row through the written model gives finite
outputs (a NaN rope_theta or norm_eps, or NaN weights, show up here). Torch-free: this runs with
or without the PyTorch parity check.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from modernbert_edge.errors import UserError

PROBE_TEXT = "The quick brown fox jumps over the lazy dog."
JSON_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def prove_folder(folder: Path, vocab_size: int, max_positions: int) -> None:
    """Raise UserError unless the model folder loads in the runtime and gives finite outputs."""
    import modernbert_edge
    from modernbert_edge.manifest import read_manifest
    from modernbert_edge.runtime.session import create_session

    for name in JSON_SIDE_FILES:
        path = folder / name
        if path.is_file():
            try:
                ok = isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                ok = False
            if not ok:
                raise UserError(f"the checkpoint's {name} is not a JSON object; fix or remove it.")
    modernbert_edge.load(folder, threads=1)  # raises the runtime's own sentence for a folder it cannot use

    ids = _probe_ids(folder, vocab_size)[:, :max_positions]  # (1, S)
    session = create_session(folder / read_manifest(folder)["model_file"], threads=1)
    outputs = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    for meta, value in zip(session.get_outputs(), outputs, strict=True):
        if not np.all(np.isfinite(value)):
            raise UserError(
                f"the exported model's {meta.name} is not finite on a probe sentence: check the checkpoint's "
                "weights and config.json (norm_eps, rope_theta); nothing was written."
            )


def _probe_ids(folder: Path, vocab_size: int) -> np.ndarray:
    path = folder / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(str(path)).encode(PROBE_TEXT).ids
        if ids:
            return np.asarray([ids], dtype=np.int64)
    return np.arange(min(vocab_size, 12), dtype=np.int64)[None, :]
