"""Fingerprint what export and quantize write, to show a refactor changed no byte.

Builds the tests' tiny random checkpoint (bench/checkpoints.py, seed 0) for each of the five tasks,
exports it (validated against PyTorch) and quantizes the export to int8, then prints one line per
file written: `sha256  task/stage/file`. manifest.json is hashed with its volatile fields removed
(`created`, `versions`, `speed`, `source.checkpoint`: a clock, the installed packages, a timing and
a temporary path); every other file is hashed as written.

    python scripts/fingerprint.py > before.txt     # on the code before the change
    python scripts/fingerprint.py > after.txt      # after it
    diff before.txt after.txt                       # empty: byte-identical

Quantization runs ONNX Runtime on the calibration batches, so the script pins the thread count
(OMP/ORT: 1) to make the statistics, and so the int8 graph, reproducible; run it twice on unchanged
code to see that it is. Needs the dev extra (torch, transformers). `--keep DIR` keeps the folders.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

TASKS = ("fill-mask", "feature-extraction", "text-classification", "token-classification", "question-answering")
VOLATILE = ("created", "versions", "speed")


def stable_manifest(path: Path) -> bytes:
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for key in VOLATILE:
        manifest.pop(key, None)
    manifest.get("source", {}).pop("checkpoint", None)
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def fingerprint(folder: Path, label: str) -> list[str]:
    lines = []
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = stable_manifest(f) if f.name == "manifest.json" else f.read_bytes()
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {label}/{f.relative_to(folder)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="write the folders here and keep them")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from modernbert_edge.bench.checkpoints import make_checkpoint
    from modernbert_edge.export.exporter import export
    from modernbert_edge.quantize.quantizer import quantize

    quiet = lambda _msg: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for task in args.tasks:
            ckpt = make_checkpoint(root / task / "checkpoint", task)
            export(str(ckpt), root / task / "fp32", log=quiet)
            quantize(root / task / "fp32", root / task / "int8", log=quiet)
            for stage in ("fp32", "int8"):
                print("\n".join(fingerprint(root / task / stage, f"{task}/{stage}")), flush=True)
    print("done", file=sys.stderr)


if __name__ == "__main__":
    main()
