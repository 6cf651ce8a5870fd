"""The runtime never imports torch, transformers, optimum or onnx: every task and `mbedge run` work in
a subprocess where importing them fails."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from modernbert_edge.runtime.tasks import FOLDER_TASKS as TASKS

BLOCKED = ("torch", "transformers", "optimum", "onnx")

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    BLOCKED = {blocked!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked import of {{name}}")
            return None

    sys.meta_path.insert(0, Block())
    folders = json.loads(sys.argv[1])

    import modernbert_edge as mbe
    from modernbert_edge.cli import app

    out = {{}}
    out["embed"] = mbe.load(folders["feature-extraction"], threads=1).embed(["alice works", "bob"]).shape
    out["fill"] = mbe.load(folders["fill-mask"]).fill_mask("the [MASK] fox", top_k=2)[0]["token"]
    out["classify"] = mbe.load(folders["text-classification"]).classify("bob")[0]["label"]
    out["tag"] = len(mbe.load(folders["token-classification"]).tag(["alice works at acme"], aggregation="max"))
    out["answer"] = mbe.load(folders["question-answering"]).answer("who?", "alice works")["answer"]
    out["run"] = sorted(mbe.load(folders["question-answering"]).run([[1, 300, 2]]))
    for task, folder in folders.items():
        question = ["--question", "who?"] if task == "question-answering" else []
        for args in (["run", folder, "alice works at acme [MASK]", *question], ["info", folder]):
            assert app(args, standalone_mode=False) in (None, 0), args  # a UserError returns 2
    print(json.dumps({{"results": out, "modules": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}}))
    """
).format(blocked=BLOCKED)


def test_runtime_runs_every_task_without_torch(exported_factory) -> None:
    folders = {task: str(exported_factory(task)) for task in TASKS}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(folders)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["modules"] == []
    assert report["results"]["embed"] == [2, 64] and report["results"]["run"] == ["end_logits", "start_logits"]
