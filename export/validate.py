"""Parity of an exported graph with the PyTorch (transformers) model it came from.

Runs by default after export when torch and transformers are importable; `mbedge parity` runs it
on demand. Batches cover lengths on both sides of the local window and padded rows; outputs are
compared on valid positions only. Every failure is collected before the check raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from modernbert_edge.errors import UserError
from modernbert_edge.export.config import ModernBertConfig
from modernbert_edge.export.tasks import TASKS

# run(input_ids, attention_mask) -> {output name: array}: the loaded folder's Model.run (export/prove.py)
RunFn = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]


def reference_available() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def parity_batches(
    vocab_size: int, local_attention: int, max_positions: int, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(input_ids, attention_mask) pairs: short, beyond the window, and a right-padded batch."""
    rng = np.random.default_rng(seed)
    cap = max_positions
    shapes = [
        [min(7, cap)],
        [min(local_attention + 37, cap)],
        [min(2 * local_attention + 5, cap), min(local_attention // 2 + 1, cap), 3],
    ]
    for lengths in shapes:
        s = max(lengths)
        ids = rng.integers(0, vocab_size, size=(len(lengths), s), dtype=np.int64)
        mask = (np.arange(s)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
        yield ids, mask


def compare_outputs(
    ours: dict[str, np.ndarray], ref: dict, mask: np.ndarray
) -> tuple[dict[str, float], dict[str, float]]:
    """Largest absolute difference and largest reference magnitude per output, over valid positions."""
    diffs, scales = {}, {}
    valid = mask.astype(bool)
    for name, out in ours.items():
        r = ref[name]
        if out.shape != r.shape:
            raise UserError(f"output {name} has shape {list(out.shape)}, PyTorch gives {list(r.shape)}.")
        if out.ndim >= 2 and out.shape[:2] == mask.shape:
            out, r = out[valid], r[valid]
        diffs[name] = float(np.abs(out - r).max()) if out.size else 0.0
        scales[name] = float(np.abs(r).max()) if r.size else 0.0
    return diffs, scales


def validate_export(
    checkpoint: Path,
    run: RunFn,
    cfg: ModernBertConfig,
    task: str,
    log: Callable[[str], None] = print,
    atol: float | None = None,
) -> dict:
    """Compare an exported graph, run by `run`, with the transformers model of `checkpoint` (whose
    config.json `cfg` is, and whose weights the caller found to be safetensors: nothing is unpickled);
    raise above tolerance."""
    if not reference_available():
        log("notice: torch/transformers are not installed; skipping the PyTorch parity check.")
        return {"status": "skipped", "reason": "torch/transformers not installed"}
    import torch
    import transformers

    spec = TASKS[task]
    atol = spec.atol if atol is None else atol
    model_cls = getattr(transformers, spec.architecture)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # a head checkpoint's encoder: the head keys are expected extras
    transformers.logging.disable_progress_bar()
    try:
        ref_model = (
            model_cls.from_pretrained(str(checkpoint), attn_implementation="sdpa", use_safetensors=True).eval().float()
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()
    names = [name for name, _ in spec.outputs]

    cases, worst, scale = [], dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    for ids, mask in parity_batches(cfg.vocab_size, cfg.local_attention, cfg.max_position_embeddings):
        ours = run(ids, mask)
        with torch.no_grad():
            out = ref_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        ref = {n: getattr(out, n).float().numpy() for n in names}
        diffs, scales = compare_outputs(ours, ref, mask)
        cases.append({"lengths": mask.sum(1).tolist(), "max_abs_diff": diffs})
        for n, d in diffs.items():
            worst[n], scale[n] = max(worst[n], d), max(scale[n], scales[n])
    # float32 rounding grows with the outputs' magnitude: the tolerance is atol for outputs of
    # magnitude <= 1 and atol * magnitude above (trained models' logits reach tens).
    limits = {n: atol * max(1.0, scale[n]) for n in names}
    max_diff = max(worst.values())
    status = "passed" if all(worst[n] <= limits[n] for n in names) else "failed"
    log(
        f"parity with PyTorch: max abs diff {max_diff:.2e} (tolerance {atol:.0e} x max(1, |output|)) "
        f"over {len(cases)} batches: {status}"
    )
    result = {
        "status": status,
        "max_abs_diff": max_diff,
        "atol": atol,
        "limits": limits,
        "per_output": worst,
        "max_abs_reference": scale,
        "cases": cases,
    }
    if status == "failed":
        bad = [
            f"lengths {c['lengths']} {n}: {d:.2e} > {limits[n]:.1e}"
            for c in cases
            for n, d in c["max_abs_diff"].items()
            if d > limits[n]
        ]
        raise UserError(f"the ONNX graph differs from PyTorch beyond tolerance: {'; '.join(bad)}.")
    return result
