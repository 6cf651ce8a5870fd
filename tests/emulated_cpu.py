"""Run inside an emulated CPU (qemu-user) by tests/test_kernels.py: ONNX Runtime's int8 kernels on the
operands in OUT_DIR/cases.npz, and quantized folders through the runtime; what it saw goes to OUT_DIR
(kernels.npz, outputs.npz, cpu.json). The comparisons run natively (numpy is slow under emulation).

    qemu-x86_64 -cpu Haswell-noTSX python tests/emulated_cpu.py OUT_DIR [FOLDER ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from modernbert_edge.cpu import INT16_SATURATING, INT32, cpu_info
from modernbert_edge.quantize import kernels
from modernbert_edge.runtime import load

K = N = 768  # a ModernBERT-base projection
M = 64


def kernel_models(out: Path) -> None:
    """MatMulInteger and DynamicQuantizeMatMul as one-node graphs, written natively (importing onnx takes
    ~20 s under emulation)."""
    from onnx import TensorProto, helper

    x_u8 = helper.make_tensor_value_info("a", TensorProto.UINT8, [None, "K"])  # any K: odd ones too
    x_f = helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, K])
    w = helper.make_tensor_value_info("w", TensorProto.INT8, [K, N])
    w_any = helper.make_tensor_value_info("w", TensorProto.INT8, ["K", "N"])
    graphs = {
        "MatMulInteger": helper.make_graph(
            [helper.make_node("MatMulInteger", ["a", "w", "za"], ["y"])],
            "g",
            [x_u8, w_any, helper.make_tensor_value_info("za", TensorProto.UINT8, [])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, [None, "N"])],
        ),
        "DynamicQuantizeMatMul": helper.make_graph(
            [helper.make_node("DynamicQuantizeMatMul", ["a", "w", "s"], ["y"], domain="com.microsoft")],
            "g",
            [x_f, w, helper.make_tensor_value_info("s", TensorProto.FLOAT, [N])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, N])],
        ),
    }
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    for op, graph in graphs.items():
        model = helper.make_model(graph, opset_imports=opsets)
        model.ir_version = 8
        (out / f"{op}.onnx").write_bytes(model.SerializeToString())


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def activations(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Gaussian, and spiky (5 % of values ±8, the rest ±0.2), as in shared/notes/cpu-classes.md."""
    sign = np.sign(rng.standard_normal((M, K)))
    return {
        "gaussian": rng.standard_normal((M, K)).astype(np.float32),
        "spiky": np.where(rng.random((M, K)) < 0.05, 8.0, 0.2).astype(np.float32) * sign.astype(np.float32),
    }


def kernel_cases(seed: int = 0) -> dict[str, np.ndarray]:
    """The operands: u8 activations and Gaussian/spiky floats, a Gaussian 768 × 768 weight quantized
    plain (8-bit, amax/127: pairs can saturate) and the quantizer's way (pair-safe)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((K, N)).astype(np.float32)
    amax = np.abs(w).max(0) / 127
    cases = {"a": rng.integers(0, 256, (M, K), dtype=np.uint8), "w": w}
    cases["plain/q"], cases["plain/scale"] = np.clip(np.rint(w / amax), -127, 127).astype(np.int8), amax
    cases["quantizer/q"], cases["quantizer/scale"] = kernels.pair_safe_int8_columns(w)
    for act, x in activations(rng).items():
        cases[f"x/{act}"] = x
    for k in ODD_K:  # K that is odd or not a multiple of 4: how the kernel pads and pairs; large same-sign weights
        sign = rng.choice(np.array([-1, 1], dtype=np.int8), size=(1, 8))
        cases[f"k{k}/q"] = (rng.integers(60, 128, (k, 8)) * sign).astype(np.int8)
        cases[f"k{k}/a"] = rng.integers(200, 256, (5, k), dtype=np.uint8)
    return cases


ODD_K = (1, 3, 7, 30, 97, 130, 259)


ZA = 117  # MatMulInteger's activation zero point


def run_kernels(cases: dict[str, np.ndarray], models: Path) -> dict[str, np.ndarray]:
    """onnxruntime's MatMulInteger and DynamicQuantizeMatMul (kernel_models in `models`) on the cases."""
    mmi, dqmm = _session(models / "MatMulInteger.onnx"), _session(models / "DynamicQuantizeMatMul.onnx")
    out = {}
    for name in ("plain", "quantizer"):
        q, scale = cases[f"{name}/q"], cases[f"{name}/scale"].astype(np.float32)
        out[f"MatMulInteger/{name}"] = mmi.run(None, {"a": cases["a"], "w": q, "za": np.array(ZA, np.uint8)})[0]
        for act in ("gaussian", "spiky"):
            out[f"DynamicQuantizeMatMul/{name}/{act}"] = dqmm.run(None, {"a": cases[f"x/{act}"], "w": q, "s": scale})[0]
    for k in ODD_K:
        feed = {"a": cases[f"k{k}/a"], "w": cases[f"k{k}/q"], "za": np.array(ZA, np.uint8)}
        out[f"MatMulInteger/k{k}"] = mmi.run(None, feed)[0]
    return out


def kernel_report(cases: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict:
    """Which class's simulation each onnxruntime result equals bit for bit, and the projection error
    of plain 8-bit and of the quantizer's weights against float activations × dequantized weights."""
    report: dict = {"bit_exact": {}, "error": {}}
    for key, y in got.items():
        op, name, *act = key.split("/")
        q = cases[f"{name}/q"]
        if op == "MatMulInteger":
            a = cases.get(f"{name}/a", cases["a"])
            sims = {c: kernels.int8_product(a, q, c, ZA) for c in (INT32, INT16_SATURATING)}
        else:
            x, scale = cases[f"x/{act[0]}"], cases[f"{name}/scale"].astype(np.float32)
            sims = {c: kernels.dynamic_quantize_matmul(x, q, scale, c) for c in (INT32, INT16_SATURATING)}
            ref = x @ (q.astype(np.float32) * scale)
            report["error"][f"{name}/{act[0]}"] = float(np.abs(y - ref).max() / np.abs(ref).max())
        report["bit_exact"][key] = {c: bool(np.array_equal(y, sim)) for c, sim in sims.items()}
    return report


def run_folders(folders: list[str], out: Path) -> None:
    """Each folder's raw graph outputs on tests/test_quantize.py's padded batch, through the runtime."""
    arrays = {}
    for i, folder in enumerate(folders):
        rng = np.random.default_rng(0)
        model = load(folder, threads=1)
        vocab = int(model.info.manifest["config"]["vocab_size"])
        ids = rng.integers(5, vocab, size=(2, 40))
        mask = np.ones_like(ids)
        mask[1, 25:] = 0
        for name, value in model.run(ids, mask).items():
            arrays[f"{i}/{name}"] = value
        arrays[f"{i}/input_ids"], arrays[f"{i}/attention_mask"] = ids, mask
    np.savez(out / "outputs.npz", **arrays)


def main() -> None:
    out = Path(sys.argv[1])
    cases = dict(np.load(out / "cases.npz"))
    np.savez(out / "kernels.npz", **run_kernels(cases, out))
    (out / "cpu.json").write_text(json.dumps(cpu_info().to_dict()))
    run_folders(sys.argv[2:], out)


if __name__ == "__main__":
    main()
