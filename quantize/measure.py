"""Measure this project's quantization against plain `quantize_dynamic` of the same fp32 graph.

    python -m modernbert_edge.quantize.measure FP32_DIR WORK_DIR [--modes int8,int4] [--shapes 8x128,1x512]

For each variant: file size, fidelity to fp32 (the quantize report: token cosine mean / worst,
head agreement), and latency with the same session options (2 threads, ORT_ENABLE_ALL),
repeats interleaved across variants so that a noisy shared machine hits them alike.
Prints a markdown table; `measure()` returns the rows for the benchmark to reuse.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx

from modernbert_edge.manifest import MODEL_FILE


def plain_dynamic(fp32_dir: Path, out_file: Path) -> Path:
    """onnxruntime.quantization.quantize_dynamic(QInt8, per_channel) of the fp32 graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32_dir / MODEL_FILE),
        str(out_file),
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return out_file


def _session(path: Path, threads: int):  # noqa: ANN202
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def time_variants(
    files: dict[str, Path], shapes: list[tuple[int, int]], vocab: int, repeats: int = 5, threads: int = 2
) -> dict[str, dict[str, float]]:
    """Median ms per (variant, shape), runs interleaved: v1 v2 v3 v1 v2 v3 ...

    Fill-mask graphs are timed as the runtime runs them: one [MASK] per text, decoded through the
    graph's mask_positions input (model.onnx's full-vocabulary logits are never computed there)."""
    sessions = {k: _session(f, threads) for k, f in files.items()}
    rng = np.random.default_rng(0)
    result: dict[str, dict[str, float]] = {k: {} for k in files}
    for b, s in shapes:
        feeds = {
            "input_ids": rng.integers(5, vocab, size=(b, s), dtype=np.int64),
            "attention_mask": np.ones((b, s), dtype=np.int64),
        }
        masked = dict(feeds, mask_positions=np.arange(b, dtype=np.int64) * s + s // 2)
        runs = {
            k: (sess, masked if any(i.name == "mask_positions" for i in sess.get_overridable_initializers()) else feeds)
            for k, sess in sessions.items()
        }
        times: dict[str, list[float]] = {k: [] for k in files}
        for sess, f in runs.values():  # warm-up
            sess.run(None, f)
        for _ in range(repeats):
            for k, (sess, f) in runs.items():
                t0 = time.perf_counter()
                sess.run(None, f)
                times[k].append(1000 * (time.perf_counter() - t0))
        for k in files:
            result[k][f"{b}x{s}"] = float(np.median(times[k]))
    return result


def measure(
    fp32_dir: Path,
    work: Path,
    modes: list[str],
    shapes: list[tuple[int, int]],
    repeats: int = 5,
    calibration: str | None = None,
    log=lambda m: print(m, file=sys.stderr),  # noqa: ANN001
) -> list[dict]:
    from modernbert_edge.quantize.fidelity import compare_models, load_model
    from modernbert_edge.quantize.quantizer import load_data, quantize

    work.mkdir(parents=True, exist_ok=True)
    fp32, manifest = load_model(fp32_dir)
    data = load_data(fp32_dir, manifest, calibration)
    files = {"fp32": fp32_dir / MODEL_FILE}
    log("plain quantize_dynamic ...")
    files["quantize_dynamic"] = plain_dynamic(fp32_dir, work / "plain_dynamic.onnx")
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
    print(format_rows(rows, shapes))


if __name__ == "__main__":
    main()
