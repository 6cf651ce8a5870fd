"""This project's quantization against plain `quantize_dynamic` of the same fp32 graph.

    python -m modernbert_edge.bench.quantization FP32_DIR WORK_DIR [--modes int8,int4] [--shapes 8x128,1x512]

For each variant: file size, fidelity to fp32 (the quantize report: token cosine mean / worst,
head agreement), and latency in the runtime's sessions (2 threads), timed with the bench's
interleaved rounds (timing.py). Prints a markdown table (the README's quantization table).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from modernbert_edge.contract import MARK, MARKED_ROWS
from modernbert_edge.manifest import MODEL_FILE
from modernbert_edge.quantize.foreign import quantize_dynamic_int8
from modernbert_edge.runtime.session import create_session
from modernbert_edge.timing import summarize, time_calls


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _marks_rows(session: ort.InferenceSession) -> bool:
    return MARKED_ROWS in session.get_modelmeta().custom_metadata_map


def time_variants(
    files: dict[str, Path], shapes: list[tuple[int, int]], vocab: int, repeats: int = 5, threads: int = 2
) -> dict[str, dict[str, float]]:
    """Median ms per (variant, shape), the variants interleaved in each round (timing.time_calls).

    Fill-mask graphs are timed as the runtime runs them: one [MASK] per text, decoded through the
    graph's marked rows (attention_mask == 2; model.onnx's full-vocabulary logits are never computed there)."""
    sessions = {k: create_session(f, threads) for k, f in files.items()}
    rng = np.random.default_rng(0)
    result: dict[str, dict[str, float]] = {k: {} for k in files}
    for b, s in shapes:
        feeds = {
            "input_ids": rng.integers(5, vocab, size=(b, s), dtype=np.int64),
            "attention_mask": np.ones((b, s), dtype=np.int64),
        }
        masked = dict(feeds, attention_mask=feeds["attention_mask"].copy())
        masked["attention_mask"][:, s // 2] = MARK

        calls = {
            k: functools.partial(sess.run, None, masked if _marks_rows(sess) else feeds) for k, sess in sessions.items()
        }
        times = time_calls(calls, repeats)
        for k in files:
            result[k][f"{b}x{s}"] = summarize(times[k])["median_ms"]
    return result


def measure(
    fp32_dir: Path,
    work: Path,
    modes: list[str],
    shapes: list[tuple[int, int]],
    repeats: int = 5,
    calibration: str | None = None,
    log: Callable[[str], None] = _stderr,
) -> list[dict]:
    """The table's rows: fp32, plain quantize_dynamic and this project's `modes`, quantized into `work`."""
    from modernbert_edge.quantize.calibration import load_data
    from modernbert_edge.quantize.fidelity import compare_models, load_model
    from modernbert_edge.quantize.quantizer import quantize

    work.mkdir(parents=True, exist_ok=True)
    fp32, manifest = load_model(fp32_dir)
    data = load_data(fp32_dir, manifest, calibration)
    files = {"fp32": fp32_dir / MODEL_FILE}
    log("plain quantize_dynamic ...")
    files["quantize_dynamic"] = quantize_dynamic_int8(fp32_dir / MODEL_FILE, work / "plain_dynamic.onnx")
    for mode in modes:
        out = work / f"ours-{mode}"
        quantize(fp32_dir, out, mode=mode, calibration=calibration, force=True, overwrite=True, log=log)
        files[f"ours {mode}"] = out / MODEL_FILE
    rows = []
    for name, f in files.items():
        row = {"variant": name, "size_mb": f.stat().st_size / 1e6}
        if name != "fp32":
            rep = compare_models(fp32, onnx.load(str(f)), manifest["task"], data)
            row.update(cosine_mean=rep["cosine_mean"], cosine_worst=rep["cosine_worst"], agreement=rep["agreement"])
        rows.append(row)
    log("timing ...")
    vocab = int(manifest["config"]["vocab_size"])
    times = time_variants(files, shapes, vocab, repeats)
    for row in rows:
        row["ms"] = times[row["variant"]]
    return rows


def format_rows(rows: list[dict], shapes: list[tuple[int, int]]) -> str:
    keys = [f"{b}x{s}" for b, s in shapes]
    base = next(r for r in rows if r["variant"] == "quantize_dynamic")["ms"]
    head = "| variant | file MB | token cos mean | token cos worst | head agreement | " + " | ".join(
        f"{k} ms (vs plain)" for k in keys
    )
    lines = [head + " |", "|" + "---|" * (5 + len(keys))]
    for r in rows:
        cells = [r["variant"], f"{r['size_mb']:.1f}"]
        if "cosine_mean" in r:
            agree = "—" if r["agreement"] is None else f"{100 * r['agreement']:.1f} %"
            cells += [f"{r['cosine_mean']:.5f}", f"{r['cosine_worst']:.5f}", agree]
        else:
            cells += ["(reference)"] * 3
        cells += [f"{r['ms'][k]:.0f} ({base[k] / r['ms'][k]:.2f}×)" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("fp32_dir", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--modes", default="int8")
    parser.add_argument("--shapes", default="8x128,1x512")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calibration", default=None)
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    rows = measure(args.fp32_dir, args.work, args.modes.split(","), shapes, args.repeats, args.calibration)
    from modernbert_edge.cpu import cpu_info

    print(f"Measured on {cpu_info().line()}:\n")  # every figure names its CPU
    print(format_rows(rows, shapes))


if __name__ == "__main__":
    main()
