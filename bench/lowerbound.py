"""The lower bound: a graph of only the model's int8 weight GEMMs, run on the real token count.

Each GEMM is a `com.microsoft.DynamicQuantizeMatMul` (what int8 weights run as on CPU: the
activation quantized per tensor on the fly, int8 weights per output channel) with random int8
weights of the model's shapes. Per layer:

    x (T, D) ─ Wqkv (D, 3D) ─ Slice [:, :D] ─ attn.Wo (D, D) ─ Wi (D, 2I) ─ Slice [:, :I] ─ mlp.Wo (I, D) ─ x

The slices only keep the chain's shapes (attention, norms, GeGLU are left out on purpose: they are
what the full model adds on top). Heads: fill-mask adds head.dense (D, D) and the decoder (D, V)
on the masked rows only (a second input `h`, one row per text), as the runtime computes them
through the graph's marked rows (attention_mask == 2); embeddings have no head; the classification head (a
few pooled rows) is left out as negligible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modernbert_edge.export import names
from modernbert_edge.export.builder import MS_DOMAIN

HEAD_NOTE = {
    "embeddings": "no head",
    "fill-mask": "head dense + decoder on the masked rows (one per text)",
    "classification": "classifier head omitted (pooled rows only)",
}


def _gemm(nodes: list, inits: list, x: str, k: int, n: int, name: str, rng: np.random.Generator) -> str:
    """One DynamicQuantizeMatMul x (T, k) @ W (k, n) -> (T, n) with random int8 weights."""
    inits.append(numpy_helper.from_array(rng.integers(-127, 128, size=(k, n), dtype=np.int8), f"{name}.weight"))
    inits.append(numpy_helper.from_array(np.full(n, 1e-3, np.float32), f"{name}.scale"))
    inits.append(numpy_helper.from_array(np.zeros(n, np.int8), f"{name}.zero_point"))
    out = f"{name}/output_0"
    nodes.append(
        helper.make_node(
            "DynamicQuantizeMatMul",
            [x, f"{name}.weight", f"{name}.scale", f"{name}.zero_point"],
            [out],
            name=f"{name}/DynamicQuantizeMatMul",
            domain=MS_DOMAIN,
        )
    )
    return out


def _first_columns(nodes: list, x: str, n: int, name: str) -> str:
    out = f"{name}/output_0"
    nodes.append(helper.make_node("Slice", [x, "zero", f"cols_{n}", "one"], [out], name=name))
    return out


def gemm_graph(dims: dict, job: str, seed: int = 0) -> onnx.ModelProto:
    """The int8-GEMM-only graph for a model with config `dims` (config.json field names)."""
    d, i, layers = dims["hidden_size"], dims["intermediate_size"], dims["num_hidden_layers"]
    rng = np.random.default_rng(seed)
    nodes: list = []
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([d], np.int64), f"cols_{d}"),
        numpy_helper.from_array(np.array([i], np.int64), f"cols_{i}"),
    ]
    x = "x"
    for n in range(layers):
        qkv = _gemm(nodes, inits, x, d, 3 * d, names.projection(n, names.ATTN_QKV), rng)  # (T, 3D)
        q = _first_columns(nodes, qkv, d, f"{names.attn(n)}/Slice")
        attn = _gemm(nodes, inits, q, d, d, names.projection(n, names.ATTN_OUT), rng)
        wi = _gemm(nodes, inits, attn, d, 2 * i, names.projection(n, names.MLP_IN), rng)  # (T, 2I)
        gelu = _first_columns(nodes, wi, i, f"{names.mlp(n)}/Slice")
        x = _gemm(nodes, inits, gelu, i, d, names.projection(n, names.MLP_OUT), rng)  # (T, D)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["tokens", d])]
    outputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["tokens", d])]
    if job == "fill-mask":
        h = _gemm(nodes, inits, "h", d, d, names.HEAD_DENSE, rng)
        h = _gemm(nodes, inits, h, d, dims["vocab_size"], names.DECODER, rng)  # (M, V)
        inputs.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["masked", d]))
        outputs.append(helper.make_tensor_value_info(h, TensorProto.FLOAT, ["masked", dims["vocab_size"]]))
    graph = helper.make_graph(nodes, f"int8 GEMMs of a {layers}-layer ModernBERT ({job})", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets, producer_name="modernbert-edge bench")


def write_gemm_graph(dims: dict, job: str, path: Path) -> Path:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(gemm_graph(dims, job), str(path))
    return path
