"""Runs every check of tests/test_arm64.py in ONE Python process (emulation starts slowly), on the CPU it
finds itself on: the emulated ARM64 one, or x86 for the reference. Imports only what a device has
(numpy, onnxruntime, tokenizers, typer and this package's runtime).

    python tests/arm64_driver.py JOB.json OUT_DIR

JOB.json:
  "folders": [{"name", "path", "task", "texts": [...], "questions"?: [...]}]   load() and `mbedge run`
  "graphs":  [{"name", "path", "batches": NPZ}]   a graph file run on fixed batches (the fidelity data)
  "probes":  [{"name", "path", "feeds": NPZ}]     a graph file run once on the NPZ's arrays (the int8 probes)
OUT_DIR gets results.json (cpu_info, API results, `mbedge run` lines) and an NPZ of outputs per graph
and probe (NAME with '/' as '__').
"""

from __future__ import annotations

import io
import json
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np


def api_results(folder: dict) -> dict:
    """What load() returns for the folder's task on its texts."""
    from modernbert_edge import load

    model = load(folder["path"], threads=1)
    texts, task = folder["texts"], folder["task"]
    if task == "feature-extraction":
        return {"embed": model.embed(texts)}
    if task == "fill-mask":
        return {"fill_mask": model.predict(texts, task="fill-mask", top_k=5)}  # a list per [MASK], as `mbedge run`
    if task == "text-classification":
        return {"classify": model.classify(texts, top_k=None)}
    if task == "token-classification":
        return {"tag": model.tag(texts, aggregation="simple")}
    if task == "question-answering":
        return {"answer": [model.answer(q, c) for q, c in zip(folder["questions"], texts, strict=True)]}
    raise ValueError(task)


def cli_lines(folder: dict) -> tuple[int, list[dict]]:
    """`mbedge run FOLDER TEXT ...` (the CLI's own code, in this process), its exit code and JSON lines."""
    from modernbert_edge.cli import app

    args = ["run", folder["path"], "--threads", "1"]
    if folder["task"] == "question-answering":
        args += ["--question", folder["questions"][0], folder["texts"][0]]
    else:
        args += folder["texts"]
    out = io.StringIO()
    code = 0
    with redirect_stdout(out):
        try:
            app(args, standalone_mode=False)
        except SystemExit as e:
            code = int(e.code or 0)
    return code, [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def run_graph(graph: dict) -> dict[str, np.ndarray]:
    """Every output of a graph file on each batch of an NPZ (ids_i, mask_i), as the runtime's session."""
    from modernbert_edge.runtime.session import create_session

    session = create_session(graph["path"], threads=1)
    names = [o.name for o in session.get_outputs()]
    data = np.load(graph["batches"])
    out = {}
    for i in range(len([k for k in data.files if k.startswith("ids_")])):
        feeds = {"input_ids": data[f"ids_{i}"], "attention_mask": data[f"mask_{i}"]}
        for name, value in zip(names, session.run(None, feeds), strict=True):
            out[f"{name}_{i}"] = value
    return out


def run_probe(probe: dict) -> dict[str, np.ndarray]:
    """A graph's outputs on the feeds of an NPZ (one array per graph input)."""
    from modernbert_edge.runtime.session import create_session

    session = create_session(probe["path"], threads=1)
    data = np.load(probe["feeds"])
    outputs = session.run(None, {i.name: data[i.name] for i in session.get_inputs()})
    return {o.name: v for o, v in zip(session.get_outputs(), outputs, strict=True)}


def main(job_file: str, out_dir: str) -> None:
    from modernbert_edge.cpu import cpu_info
    from modernbert_edge.runtime.stream import jsonable

    job = json.loads(Path(job_file).read_text())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict = {"cpu": cpu_info().to_dict(), "folders": {}, "seconds": {}}
    for folder in job.get("folders", []):
        t = time.perf_counter()
        code, lines = cli_lines(folder)
        results["folders"][folder["name"]] = {"api": jsonable(api_results(folder)), "cli": lines, "cli_exit": code}
        results["seconds"][folder["name"]] = round(time.perf_counter() - t, 2)
    for graph in job.get("graphs", []):
        t = time.perf_counter()
        np.savez(out / f"{graph['name'].replace('/', '__')}.npz", **run_graph(graph))
        results["seconds"][graph["name"]] = round(time.perf_counter() - t, 2)
    for probe in job.get("probes", []):
        np.savez(out / f"{probe['name'].replace('/', '__')}.npz", **run_probe(probe))
    results["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    (out / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:3])
