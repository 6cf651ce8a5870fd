"""int8 on every CPU class: the CPU's kernel class, the exact simulator of ONNX Runtime's int8 products
(bit for bit against onnxruntime on this CPU, and on an emulated AVX2 CPU where qemu-user is here),
weights that cannot saturate, and quantized folders that give the same answers on both classes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modernbert_edge.cpu import INT16_SATURATING, INT32, KERNEL_CLASSES, cpu_info, kernel_class
from modernbert_edge.export.tasks import TASKS
from modernbert_edge.quantize import kernels
from modernbert_edge.quantize.quantizer import quantize

sys.path.insert(0, str(Path(__file__).parent))
import emulated_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QEMU = Path(os.environ.get("MBEDGE_EMULATION_DIR", ROOT / ".emulation")) / "qemu/usr/bin/qemu-x86_64"
AVX2_CPU = "Haswell-noTSX"  # AVX2 + FMA, no AVX512, no VNNI: the AVX2-only EPYC's int8 kernel
QUIET = {"log": lambda _m: None}


def test_kernel_class_follows_the_features():
    assert kernel_class("x86_64", {"avx2": True, "avx512_vnni": False, "avx_vnni": False, "amx_int8": False}) == (
        INT16_SATURATING
    )
    for exact in ("avx512_vnni", "avx_vnni", "amx_int8"):
        assert kernel_class("x86_64", {"avx2": True, exact: True}) == INT32
    assert kernel_class("x86_64", {"avx2": False}) == INT32  # SSE widens to int16 operands, pmaddwd to int32
    assert kernel_class("aarch64", {"dotprod": False}) == INT32
    info = cpu_info()
    assert info.kernel_class in KERNEL_CLASSES and info.kernel_class in info.line()
    assert info.to_dict()["int8_kernel_class"] == info.kernel_class


def test_simulator_matches_onnxruntime_bit_for_bit_on_this_cpu(tmp_path):
    """MatMulInteger (int32 out, nonzero zero point) and DynamicQuantizeMatMul (float out) equal the
    simulation of this CPU's class exactly; the plain 8-bit weights make the two classes differ, so
    only the right class can match."""
    cases = emulated_cpu.kernel_cases()
    emulated_cpu.kernel_models(tmp_path)
    report = emulated_cpu.kernel_report(cases, emulated_cpu.run_kernels(cases, tmp_path))
    here = cpu_info().kernel_class
    for case, by_class in report["bit_exact"].items():
        assert by_class[here], (case, here)
    assert not report["bit_exact"]["DynamicQuantizeMatMul/plain/spiky"][
        INT32 if here == INT16_SATURATING else INT16_SATURATING
    ]


def _gaussian_weights(seed: int = 0, shape: tuple[int, int] = (768, 768)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_saturating_class_is_what_overflows():
    """Plain 8-bit weights saturate AVX2's pair sums on these activations; the quantizer's do not."""
    rng = np.random.default_rng(1)
    w = _gaussian_weights()
    x = emulated_cpu.activations(rng)["spiky"]
    amax = np.abs(w).max(0) / 127
    plain = np.clip(np.rint(w / amax), -127, 127).astype(np.int8)
    assert kernels.overflowing_pairs(plain) > 0 and kernels.saturation_error(x, plain, amax) > 0.05
    q, scale = kernels.pair_safe_int8_columns(w)
    assert kernels.overflowing_pairs(q) == 0 and kernels.saturation_error(x, q, scale) == 0.0


def test_pair_safe_weights_cost_less_than_7_bits():
    """The price of exactness on AVX2: the weight error between plain 8-bit's and 7-bit's."""
    w = _gaussian_weights()

    def err(q, scale):
        return np.linalg.norm(q.astype(np.float32) * scale - w) / np.linalg.norm(w)

    amax = np.abs(w).max(0)
    plain = err(np.clip(np.rint(w / (amax / 127)), -127, 127), amax / 127)
    seven = err(np.clip(np.rint(w / (amax / 63)), -63, 63), amax / 63)
    safe = err(*kernels.pair_safe_int8_columns(w))
    assert plain < safe < 0.75 * seven, (plain, safe, seven)


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 40),
    n=st.integers(1, 6),
    dist=st.sampled_from(["normal", "laplace", "uniform", "spiky", "equal"]),
    seed=st.integers(0, 2**16),
)
def test_pair_safe_weights_give_the_same_integers_on_both_classes(k, n, dist, seed):
    rng = np.random.default_rng(seed)
    w = {
        "normal": lambda: rng.standard_normal((k, n)),
        "laplace": lambda: rng.laplace(size=(k, n)),
        "uniform": lambda: rng.uniform(-1, 1, (k, n)),
        "spiky": lambda: rng.standard_normal((k, n)) * np.where(rng.random((k, n)) < 0.1, 30.0, 1.0),
        "equal": lambda: np.ones((k, n)) * rng.choice([-1.0, 1.0], size=(1, n)),
    }[dist]().astype(np.float32)
    q, scale = kernels.pair_safe_int8_columns(w)
    assert q.dtype == np.int8 and np.abs(q.astype(int)).max() <= 127 and kernels.max_pair_sum(q) <= kernels.PAIR_LIMIT
    assert np.all(np.isfinite(scale)) and np.all(scale > 0)
    assert np.abs(q * scale - w).max() <= np.abs(w).max() * 0.5 + 1e-6  # close to W, not just safe
    a = np.concatenate([np.full((1, k), 255, np.uint8), rng.integers(0, 256, (7, k), dtype=np.uint8)])
    for za in (0, 128, 255):
        assert np.array_equal(kernels.int8_product(a, q, INT32, za), kernels.int8_product(a, q, INT16_SATURATING, za))


def test_dynamic_quantize_matches_onnxruntime():
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
        [
            helper.make_tensor_value_info("q", TensorProto.UINT8, [None, None]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("z", TensorProto.UINT8, []),
        ],
    )
    sess = ort.InferenceSession(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    rng = np.random.default_rng(0)
    for x in (rng.standard_normal((33, 17)), np.abs(rng.standard_normal((4, 9))), -np.abs(rng.standard_normal((3, 3)))):
        x = (x * rng.uniform(0.01, 100)).astype(np.float32)
        q, s, z = sess.run(None, {"x": x})
        mq, ms, mz = kernels.dynamic_quantize(x)
        assert np.array_equal(q, mq) and s == ms and z == mz


def _emulated(out: Path, folders: list[Path]) -> tuple[dict, dict, dict]:
    """Run tests/emulated_cpu.py under qemu's AVX2 CPU: its CPU, kernel report and folder outputs."""
    out.mkdir()
    cases = emulated_cpu.kernel_cases()
    np.savez(out / "cases.npz", **cases)
    emulated_cpu.kernel_models(out)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), OMP_NUM_THREADS="1")
    cmd = [str(QEMU), "-cpu", AVX2_CPU, sys.executable, str(ROOT / "tests/emulated_cpu.py"), str(out)]
    res = subprocess.run([*cmd, *map(str, folders)], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = emulated_cpu.kernel_report(cases, dict(np.load(out / "kernels.npz")))
    return json.loads((out / "cpu.json").read_text()), report, dict(np.load(out / "outputs.npz"))


# tests/test_quantize.py's test_every_projection_of_every_task_is_quantized cases (8 of them failed on an
# AVX2-only EPYC with plain 8-bit weights: 15-27 % of the output's largest value against a 5 % bound)
EVERY_PROJECTION_CASES = (
    *((task, "int8") for task in sorted(TASKS)),
    ("fill-mask", "int8-static"),
    ("fill-mask", "int4"),
    ("text-classification", "int4"),
    ("token-classification", "int8-static"),
)


@pytest.mark.skipif(not QEMU.is_file(), reason=f"{QEMU} is absent: run bash .ci/emulators.sh to emulate an AVX2 CPU")
def test_emulated_avx2_cpu(exported_factory, tmp_path):
    """On an emulated AVX2 CPU without VNNI (onnxruntime's own kernels, run instruction by instruction
    by qemu): the simulator is bit-exact for the saturating class, a 768 × 768 projection with the
    quantizer's weights errs <= 2 % of the output's max (plain 8-bit: far more), and quantized folders
    give this CPU's answers."""
    folders, sources = [], []
    for task, mode in EVERY_PROJECTION_CASES:
        out = tmp_path / f"{task}-{mode}"
        sources.append(exported_factory(task))
        quantize(sources[-1], out, mode=mode, **QUIET)
        folders.append(out)
    cpu, report, emulated = _emulated(tmp_path / "emulated", folders)

    assert cpu["int8_kernel_class"] == INT16_SATURATING, cpu
    for case, by_class in report["bit_exact"].items():
        assert by_class[INT16_SATURATING], case
    for act in ("gaussian", "spiky"):
        assert report["error"][f"quantizer/{act}"] <= 0.02, report["error"]
        assert report["error"][f"plain/{act}"] > 0.05, report["error"]  # the emulated kernel does saturate

    (tmp_path / "native").mkdir()
    emulated_cpu.run_folders([str(f) for f in folders], tmp_path / "native")
    native = np.load(tmp_path / "native/outputs.npz")
    (tmp_path / "fp32").mkdir()
    emulated_cpu.run_folders([str(f) for f in sources], tmp_path / "fp32")  # the same inputs, in fp32
    fp32 = np.load(tmp_path / "fp32/outputs.npz")
    for key in native.files:
        if not key.endswith(("input_ids", "attention_mask")):  # test_quantize's bound, now on AVX2 too
            rel = 0.15 if EVERY_PROJECTION_CASES[int(key.split("/")[0])][1] == "int4" else 0.05
            assert np.abs(fp32[key] - emulated[key]).max() <= rel * np.abs(fp32[key]).max() + 1e-3, key
        if key.endswith(("input_ids", "attention_mask")):
            assert np.array_equal(native[key], emulated[key])
            continue
        ref, got = native[key], emulated[key]
        # the same int8 products; only float kernels (AVX2 against this CPU's) round differently,
        # which can move an activation across a quantization step now and then
        assert np.abs(ref - got).max() <= 1e-3 * np.abs(ref).max() + 1e-5, key


def test_info_names_the_cpu_and_what_the_gate_covered(exported_factory, tmp_path):
    """`mbedge info` names the CPU's features and kernel class, says the gate covered this CPU's class,
    and warns on an AVX2 CPU about a folder quantized before kernel classes were recorded."""
    import dataclasses
    from unittest import mock

    from typer.testing import CliRunner

    from modernbert_edge.cli import app
    from modernbert_edge.manifest import read_manifest, write_manifest
    from modernbert_edge.runtime import engines

    out = tmp_path / "q"
    quantize(exported_factory("text-classification"), out, **QUIET)
    runner = CliRunner()
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0, res.output
    assert cpu_info().line() in res.output and f"gate covered this CPU's {cpu_info().kernel_class}" in res.output
    assert engines.INT8_SPEED[cpu_info().kernel_class] in res.output
    speed = read_manifest(out)["speed"]  # measured when quantizing, on this CPU, against the fp32 source
    assert speed["cpu"] == cpu_info().line() and speed["speedup"] == pytest.approx(
        speed["fp32_ms"] / speed["quantized_ms"], rel=0.01
    )
    assert f"when quantized: {speed['speedup']:.2f}x its fp32 source" in res.output

    manifest = read_manifest(out)
    del manifest["fidelity"]["kernel_classes"]  # as written before this version
    write_manifest(out, manifest)
    avx2 = dataclasses.replace(cpu_info(), kernel_class=INT16_SATURATING)
    with mock.patch.object(engines, "cpu_info", lambda: avx2):
        res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0 and "WARNING: this folder's fidelity gate did not cover" in res.output, res.output
    assert "buys a smaller file, not speed" in res.output


def test_gate_refuses_weights_that_can_saturate(exported_factory, tmp_path, monkeypatch):
    """int8 weights with same-sign pairs above 128 (plain amax/127, what the quantizer wrote before)
    leave the int16-saturating class uncovered: the gate fails saying so and writes nothing."""
    from modernbert_edge.errors import UserError
    from modernbert_edge.manifest import read_manifest
    from modernbert_edge.quantize import weights

    def plain(w_kn, steps=0):
        amax = np.abs(w_kn).max(axis=0) / 127
        return np.clip(np.rint(w_kn / amax), -127, 127).astype(np.int8), amax.astype(np.float32)

    monkeypatch.setattr(weights, "pair_safe_int8_columns", plain)
    src = exported_factory("fill-mask")
    other = next(c for c in KERNEL_CLASSES if c != cpu_info().kernel_class)
    with pytest.raises(
        UserError, match=rf"does not cover {other} ones \(\d+ int8 weight pairs can saturate AVX2's int16"
    ):
        quantize(src, tmp_path / "q", fallback=False, **QUIET)
    assert not (tmp_path / "q").exists()
    quantize(src, tmp_path / "q", fallback=False, force=True, **QUIET)
    fidelity = read_manifest(tmp_path / "q")["fidelity"]
    assert fidelity["gate"] == {
        "min_cosine": 0.99,
        "status": "forced",
        "kernel_classes": sorted(KERNEL_CLASSES),
        "not_covered": [other],
    }
    assert fidelity["kernel_classes"]["weights"]["overflowing_pairs"] > 0
    assert fidelity["kernel_classes"]["classes"][other]["cosine_worst"] is None
