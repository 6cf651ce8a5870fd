"""Engines side by side on the same graph call: onnxruntime (contrib and portable graphs) and
OpenVINO (portable graph, f32 and bf16), fp32 and int8, interleaved in one process.

    python -m modernbert_edge.bench.engines DIR [--shapes 1x128,8x128,1x512,1x2048] [--repeats 5]

DIR holds folders written by mbedge export / quantize (any that exist are timed):
    contrib  contrib-int8   (mbedge export --ops contrib; mbedge quantize)
    portable portable-int8s (mbedge export --ops portable; mbedge quantize --mode int8-static)
Each system is one graph call on B rows of S random real tokens (no padding, no tokenizer: the
runtime's own overhead is not measured here). Fidelity: worst-token and mean cosine of
last_hidden_state to onnxruntime on the contrib fp32 graph, on the first shape.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modernbert_edge.contract import feeds
from modernbert_edge.manifest import MODEL_FILE
from modernbert_edge.timing import cosines, summarize, time_calls

# name: (folder, engine, OpenVINO precision hint)
SYSTEMS: dict[str, tuple[str, str, str | None]] = {
    "ort contrib fp32": ("contrib", "onnxruntime", None),
    "ort portable fp32": ("portable", "onnxruntime", None),
    "ort contrib int8": ("contrib-int8", "onnxruntime", None),
    "ort portable int8-static": ("portable-int8s", "onnxruntime", None),
    "ov portable fp32 (f32)": ("portable", "openvino", "f32"),
    "ov portable fp32 (bf16)": ("portable", "openvino", "bf16"),
    "ov portable int8-static (f32)": ("portable-int8s", "openvino", "f32"),
    "ov portable int8-static (bf16)": ("portable-int8s", "openvino", "bf16"),
}
REFERENCE = "ort contrib fp32"


def make_call(folder: Path, engine: str, hint: str | None, threads: int) -> Callable:
    """fn(ids, mask) -> last_hidden_state, one graph call."""
    if engine == "onnxruntime":
        from modernbert_edge.runtime.session import create_session

        session = create_session(folder / MODEL_FILE, threads)
        return lambda ids, mask: session.run(None, feeds(ids, mask))[0]
    from modernbert_edge.runtime.engines import OpenVinoSession

    session = OpenVinoSession(
        folder / MODEL_FILE, threads, {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
    )
    name = session.output_names[0]
    return lambda ids, mask: session.run(ids, mask)[name]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--shapes", default="1x128,8x128,1x512,1x2048")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated names from SYSTEMS")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    wanted = [s for s in args.systems.split(",") if (args.dir / SYSTEMS[s][0] / MODEL_FILE).is_file()]
    calls = {s: make_call(args.dir / SYSTEMS[s][0], SYSTEMS[s][1], SYSTEMS[s][2], args.threads) for s in wanted}
    vocab = json.loads((args.dir / SYSTEMS[wanted[0]][0] / "config.json").read_text())["vocab_size"]
    rng = np.random.default_rng(0)
    results: dict = {"load_average": os.getloadavg(), "shapes": {}, "fidelity": {}}
    for i, shape in enumerate(args.shapes.split(",")):
        b, s = (int(x) for x in shape.split("x"))
        ids = rng.integers(5, vocab, size=(b, s), dtype=np.int64)
        mask = np.ones_like(ids)
        if i == 0 and REFERENCE in calls:
            ref = calls[REFERENCE](ids, mask)
            for name, fn in calls.items():
                c = cosines(fn(ids, mask), ref)
                results["fidelity"][name] = {"cosine_worst": float(c.min()), "cosine_mean": float(c.mean())}
        feed = {name: (lambda fn=fn, ids=ids, mask=mask: fn(ids, mask)) for name, fn in calls.items()}
        times = time_calls(feed, args.repeats)
        results["shapes"][shape] = {name: summarize(t)["median_ms"] for name, t in times.items()}
        print(f"{shape} (load {os.getloadavg()[0]:.1f})", flush=True)
        for name, ms in results["shapes"][shape].items():
            print(f"  {name:<32} {ms:9.1f} ms", flush=True)
    results["load_average_end"] = os.getloadavg()
    print(json.dumps(results["fidelity"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
