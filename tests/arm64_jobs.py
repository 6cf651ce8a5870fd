"""tests/test_arm64.py's folders and emulated drivers, run in the background beside the rest of the suite.

    python tests/arm64_jobs.py TMP     (what conftest.py's `arm64_drivers` fixture starts: start())

conftest.py starts it with the session's first test, at the lowest priority, so that the drivers
(about three CPU-minutes under qemu) take the CPU time the other tests leave; the ARM64 checks run
last and wait for it (Drivers.results).

Every folder is built here on x86 (each task in fp32, int8, int8-static and int4; an outlier-stress
int8 folder; the bundled model), then tests/arm64_driver.py runs all of them in one process per CPU:
natively for the reference, and under qemu-aarch64 on each CPU of CPUS, in the arm64 Python that
.ci/arm64-env.sh builds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import pytest

from modernbert_edge.bench.checkpoints import make_checkpoint
from modernbert_edge.demo import BUNDLED, FILL_MASK_EXAMPLES, SIMILARITY_EXAMPLES
from modernbert_edge.export.exporter import export
from modernbert_edge.export.names import FINAL_HIDDEN
from modernbert_edge.export.tasks import TASKS
from modernbert_edge.quantize.calibration import load_data
from modernbert_edge.quantize.fidelity import masked_batches
from modernbert_edge.quantize.quantizer import quantize
from modernbert_edge.quantize.smoothing import serialize_with_outputs

ROOT = Path(__file__).resolve().parent.parent
EMULATION = Path(os.environ.get("MBEDGE_EMULATION_DIR", ROOT / ".emulation"))
QEMU = EMULATION / "qemu" / "usr" / "bin" / "qemu-aarch64"
ARM = EMULATION / "arm64"
DRIVER = Path(__file__).with_name("arm64_driver.py")

# The emulated CPUs and the int8 features each must report. qemu's `-cpu max` has SME, which sends
# onnxruntime's int8 and fp32 matmuls to KleidiAI's SME kernels (and emulates them 4-5x slower), so
# the dot product + i8mm path is checked on a Neoverse N2 (Graviton4's and Cobalt 100's generation,
# Cortex-A710 class: no SME), and max runs the SME path on a subset (SME_JOB).
CPUS = {
    "neoverse-n2": {"dotprod": True, "i8mm": True, "sme": False},
    "cortex-a72": {"dotprod": False, "i8mm": False, "sme": False},
    "max": {"dotprod": True, "i8mm": True, "sme": True},
}
FULL = ("neoverse-n2", "cortex-a72")  # every folder; max: SME_JOB
SME_JOB = {"folders": ("fill-mask/int8", "mini-fill-mask/int8"), "graphs": ("stress/int8",)}
MODES = ("fp32", "int8", "int8-static", "int4")
SLICES = {"calibration": "calibration", "held-out": "heldout"}  # the report's slices -> CalibrationSet fields
DRIVER_TIMEOUT = 900
RUN_TIMEOUT = 1500  # the build and the drivers, counted from when the checks start waiting
TEXTS = {
    "feature-extraction": ["the quick brown fox", "paris is the capital of france and a city of music"],
    "fill-mask": ["the capital of france is [MASK].", "alice works at [MASK] corp in berlin since march."],
    "text-classification": ["the model reads long documents", "a lazy dog", "london music science python code"],
    "token-classification": ["alice works at acme corp in berlin", "bob and the quick fox in new york city"],
    "question-answering": ["alice works at acme corp in berlin since march of last year.", "bob lives in london."],
}
QUESTIONS = ["where does alice work?", "where does bob live?"]
QUIET = {"log": lambda _m: None}


def env_problem() -> str | None:
    """Why the emulated ARM64 Python cannot run here, or None."""
    for path in (QEMU, ARM / "root.done"):
        if not path.exists():
            return (
                f"no ARM64 emulation here ({path} is missing): run `bash .ci/emulators.sh && bash .ci/arm64-env.sh` "
                "after building .venv (debootstrap needs root)"
            )
    return None


@dataclass
class Drivers:
    """The background run (or why there is none); results() waits for it."""

    tmp: Path
    proc: subprocess.Popen | None = None
    problem: str | None = None  # the emulation is missing: the checks skip, saying this

    def results(self) -> dict:
        """{"tmp", "out" (each driver's results.json), "manifests", "graphs", "batches"}, once the run has
        finished; a skip without the emulation, the run's log when building or a driver failed."""
        if self.problem:
            pytest.skip(self.problem)
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=RUN_TIMEOUT)
        finally:
            self.stop()
        log = (self.tmp / "run.log").read_text(errors="replace")
        assert code == 0, f"building the ARM64 folders or running a driver failed (exit {code}):\n{log[-4000:]}"
        work = json.loads((self.tmp / "work.json").read_text())
        out = {where: json.loads((self.tmp / where / "results.json").read_text()) for where in ("x86", *CPUS)}
        seconds = {k: v["seconds"]["total"] for k, v in out.items()}
        print(f"arm64: folders built in {work.pop('build_s'):.0f} s; driver seconds {seconds}")
        return {"tmp": self.tmp, "out": out, **work}

    def stop(self) -> None:
        """Kills the run and its drivers, if they are still going."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start(tmp: Path) -> Drivers:
    """Starts `python tests/arm64_jobs.py TMP` in the background (its output in TMP/run.log), at the lowest
    priority: it takes the CPU time the rest of the suite leaves, and slows no other test's timing."""
    problem = env_problem()
    if problem:
        return Drivers(tmp, problem=problem)
    with open(tmp / "run.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, __file__, str(tmp)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            # Its own process group (stop() kills the drivers with it), in pytest's session: a new session
            # would be a new scheduler autogroup, which Linux shares the CPU with as an equal, nice or not.
            process_group=0,
            preexec_fn=lambda: os.nice(19),
        )
    return Drivers(tmp, proc)


def main(tmp: Path) -> None:
    """Builds the folders and jobs, runs the driver on x86 and on each emulated CPU in parallel, and
    writes TMP/work.json (what the checks need besides the drivers' results); exits 1 if one failed."""
    pins = " ".join(f"{p}=={version(p)}" for p in ("onnxruntime", "numpy", "tokenizers", "typer"))
    site_pins = (ARM / "site.pins").read_text().strip() if (ARM / "site.pins").is_file() else "nothing"
    assert site_pins == pins, f"the arm64 env has {site_pins}, this venv {pins}: rerun `bash .ci/arm64-env.sh`"
    t0 = time.perf_counter()
    # The working tree's own package (pure Python), so the code under test is never a stale copy.
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "arm64-env.sh"), "--project", str(tmp / "project")], env=env)
    assert proc.returncode == 0, "installing the working tree's package for the emulated Python failed (above)"
    folders: list[dict] = []
    graphs: list[dict] = []
    manifests: dict[str, dict] = {}
    batches: dict[str, str] = {}

    def add(name: str, path: Path, task: str, texts: list[str], graph: bool = True) -> None:
        manifests[name] = json.loads((path / "manifest.json").read_text())
        entry = {"name": name, "path": str(path), "task": task, "texts": texts}
        if task == "question-answering":
            entry["questions"] = QUESTIONS
        folders.append(entry)
        if graph:  # fp32's graph on ARM once (fill-mask: padded rows, a row past the window); x86's always
            on_arm = name.split("/")[1] != "fp32" or name == "fill-mask/fp32"
            path = _fidelity_graph(path, tmp, name)
            graphs.append({"name": name, "path": str(path), "batches": batches[task], "arm": on_arm})

    for task in TASKS:  # the tiny checkpoints of tests/conftest.py's fixtures
        fp32 = tmp / f"{task}-fp32"
        export(str(make_checkpoint(tmp / f"{task}-ckpt", task)), fp32, **QUIET)
        batches[task] = str(_fidelity_batches(fp32, tmp / f"{task}-batches.npz", ("held-out",)))
        add(f"{task}/fp32", fp32, task, TEXTS[task])
        for mode in MODES[1:]:
            quantize(fp32, tmp / f"{task}-{mode}", mode=mode, **QUIET)
            add(f"{task}/{mode}", tmp / f"{task}-{mode}", task, TEXTS[task])
    # The outlier-stress kind (bench/checkpoints.py): residual channels 30x the rest, 300x at the projections.
    ckpt = make_checkpoint(tmp / "stress-ckpt", "feature-extraction", num_hidden_layers=6, outlier_channels=4)
    for mode in ("fp32", "int8"):
        stress = tmp / f"stress-{mode}"
        if mode == "fp32":
            export(str(ckpt), stress, **QUIET)
            batches["stress"] = str(_fidelity_batches(stress, tmp / "stress-batches.npz", tuple(SLICES)))
        else:
            quantize(tmp / "stress-fp32", stress, **QUIET)
        manifests[f"stress/{mode}"] = json.loads((stress / "manifest.json").read_text())
        graph = _fidelity_graph(stress, tmp, f"stress/{mode}")
        arm = mode == "int8"  # ARM's int8 against x86's fp32
        graphs.append({"name": f"stress/{mode}", "path": str(graph), "batches": batches["stress"], "arm": arm})
    # The bundled, trained model: what `mbedge demo` shows, run from folders made on x86.
    for task, texts in (("fill-mask", FILL_MASK_EXAMPLES), ("feature-extraction", SIMILARITY_EXAMPLES)):
        export(str(BUNDLED), tmp / f"mini-{task}-fp32", task=task, **QUIET)
        quantize(tmp / f"mini-{task}-fp32", tmp / f"mini-{task}-int8", **QUIET)
        for mode in ("fp32", "int8"):
            add(f"mini-{task}/{mode}", tmp / f"mini-{task}-{mode}", task, texts, graph=False)
    probes = _probes(tmp)
    arm_graphs = [g for g in graphs if g["arm"]]
    jobs = {
        "x86": {"folders": folders, "graphs": graphs, "probes": probes},
        "arm": {"folders": folders, "graphs": arm_graphs, "probes": probes},
        "sme": {
            "folders": [f for f in folders if f["name"] in SME_JOB["folders"]],
            "graphs": [g for g in graphs if g["name"] in SME_JOB["graphs"]],
            "probes": probes,
        },
    }
    for where, job in jobs.items():
        (tmp / f"job-{where}.json").write_text(json.dumps(job))
    build_s = time.perf_counter() - t0

    procs = {"x86": _start([sys.executable, str(DRIVER), str(tmp / "job-x86.json"), str(tmp / "x86")], tmp)}
    python = [str(QEMU), "-L", str(ARM / "root"), str(ARM / "root" / "usr" / "bin" / "python3.11")]
    for cpu in CPUS:  # in parallel
        env = {"PYTHONPATH": f"{tmp / 'project'}:{ARM / 'site'}", "QEMU_CPU": cpu, "PATH": os.environ["PATH"]}
        job = tmp / ("job-arm.json" if cpu in FULL else "job-sme.json")
        procs[cpu] = _start([*python, str(DRIVER), str(job), str(tmp / cpu)], tmp, env)
    failed = []
    for where, driver in procs.items():
        code = driver.wait(timeout=DRIVER_TIMEOUT)
        if code != 0:
            log = (tmp / f"{where}.log").read_text(errors="replace")
            failed.append(f"the driver failed on {where} (exit {code}):\n{log[-4000:]}")
    if failed:
        sys.exit("\n".join(failed))
    work = {"manifests": manifests, "graphs": graphs, "batches": batches, "build_s": build_s}
    (tmp / "work.json").write_text(json.dumps(work))


def _start(cmd: list[str], tmp: Path, env: dict | None = None) -> subprocess.Popen:
    """The driver, its output to OUT_DIR.log (OUT_DIR: its last argument)."""
    with open(tmp / f"{Path(cmd[-1]).name}.log", "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp)


def _fidelity_batches(fp32: Path, path: Path, slices: tuple[str, ...]) -> Path:
    """The quantize report's batches of `slices`, masked as the report masks them (per slice, seed 0)."""
    data = load_data(fp32, json.loads((fp32 / "manifest.json").read_text()), None)
    masked = [m for s in slices for m in masked_batches(getattr(data, SLICES[s]), data.mask_token_id)]
    arrays = {"slices": np.array(slices)}
    for i, (batch, picked) in enumerate(masked):
        arrays |= {f"ids_{i}": batch.input_ids, f"mask_{i}": batch.attention_mask, f"picked_{i}": picked}
    np.savez(path, **arrays)
    return path


def _fidelity_graph(folder: Path, tmp: Path, name: str) -> Path:
    """The folder's graph with the final hidden states as an extra output, as the report reads them."""
    path = tmp / "graphs" / f"{name.replace('/', '__')}.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(serialize_with_outputs(onnx.load(str(folder / "model.onnx")), [FINAL_HIDDEN]))
    return path


PROBE_SHAPES = [(1, 768, 64), (3, 33, 17), (64, 768, 768)]  # (M, K, N): the vector path, odd K and N, a block
EDGE_OPERANDS = [(0, -128), (0, -127), (255, -128), (255, 127)]  # (a, b) filling the whole operands


def _graph(node: onnx.NodeProto, inputs: list, outputs: list, inits: list, path: Path) -> str:
    graph = onnx.helper.make_graph([node], path.stem, inputs, outputs, initializer=inits)
    opsets = [onnx.helper.make_opsetid("", 20), onnx.helper.make_opsetid("com.microsoft", 1)]
    model = onnx.helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    onnx.save(model, str(path))
    return str(path)


def _probes(tmp: Path) -> list[dict]:
    """int8 probes, each a one-node graph and its feeds: MatMulInteger(u8 a, s8 b) -> int32 on random
    full-range operands of a few shapes; DynamicQuantizeMatMul on activations with outlier channels."""
    T, info, rng = onnx.TensorProto, onnx.helper.make_tensor_value_info, np.random.default_rng(0)
    probes = []
    mmi = _graph(
        onnx.helper.make_node("MatMulInteger", ["a", "b"], ["y"]),
        [info("a", T.UINT8, ["M", "K"]), info("b", T.INT8, ["K", "N"])],
        [info("y", T.INT32, ["M", "N"])],
        [],
        tmp / "matmulinteger.onnx",
    )
    for i, (m, k, n) in enumerate(PROBE_SHAPES):
        feeds = {"a": rng.integers(0, 256, size=(m, k), dtype=np.uint8), "b": rng.integers(-128, 128, (k, n), np.int8)}
        np.savez(tmp / f"probe-mmi-{i}.npz", **feeds)
        probes.append({"name": f"probe/mmi-{i}", "path": mmi, "feeds": str(tmp / f"probe-mmi-{i}.npz")})
    for av, bv in EDGE_OPERANDS:  # constant operands: the extremes of the int16 pair sums
        feeds = {"a": np.full((8, 64), av, np.uint8), "b": np.full((64, 16), bv, np.int8)}
        np.savez(tmp / f"probe-edge-{av}{bv}.npz", **feeds)
        probes.append({"name": f"probe/edge-{av}{bv}", "path": mmi, "feeds": str(tmp / f"probe-edge-{av}{bv}.npz")})
    w = rng.integers(-127, 128, size=(256, 64)).astype(np.int8)
    w_scale = (rng.random(64) * 0.01 + 0.001).astype(np.float32)
    dq = _graph(
        onnx.helper.make_node("DynamicQuantizeMatMul", ["x", "w", "w_scale"], ["y"], domain="com.microsoft"),
        [info("x", T.FLOAT, ["M", 256])],
        [info("y", T.FLOAT, ["M", 64])],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(w_scale, "w_scale")],
        tmp / "dynamicquantizematmul.onnx",
    )
    x = rng.standard_normal((16, 256)).astype(np.float32)
    x[:, :3] *= 20  # outlier channels: per-tensor and per-row scales differ
    np.savez(tmp / "probe-dq.npz", x=x, w=w, w_scale=w_scale)
    probes.append({"name": "probe/dq", "path": dq, "feeds": str(tmp / "probe-dq.npz")})
    return probes


if __name__ == "__main__":
    main(Path(sys.argv[1]))
