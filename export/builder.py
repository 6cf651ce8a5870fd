"""A thin helper for writing ONNX graphs node by node.

Node names are hierarchical (`/model/layers.0/attn/Wqkv/MatMul`) and a node's outputs are
`{node}/output_{i}`, as in onnxruntime-genai's builder. Initializers keep the names they are
given (checkpoint keys for weights); small constants are shared under one name per value.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"
# The two flavours of graph: the same structure, attention and rotary from different op sets.
#   contrib:  com.microsoft MultiHeadAttention / GroupQueryAttention / RotaryEmbedding (ONNX Runtime's fastest)
#   portable: standard ONNX only (opset-23 Attention and RotaryEmbedding), for any engine (OpenVINO)
CONTRIB, PORTABLE = "contrib", "portable"
OPS = (CONTRIB, PORTABLE)
OPSETS = {CONTRIB: 20, PORTABLE: 23}  # contrib: Gelu-20 and LayerNormalization-17 are emitted directly
OPSET = OPSETS[CONTRIB]


class GraphBuilder:
    """Collects nodes and initializers; `finish` turns them into a ModelProto."""

    def __init__(self, opset: int = OPSET) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.metadata: dict[str, str] = {}  # the model's metadata_props

    def op(
        self,
        op_type: str,
        inputs: list[str],
        name: str,
        outputs: int = 1,
        domain: str = "",
        **attrs: object,
    ) -> str | list[str]:
        """Add one node; returns its output name (or names when outputs > 1)."""
        out = [f"{name}/output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, out, name=name, domain=domain or None, **attrs))
        return out[0] if outputs == 1 else out

    def branch(self) -> GraphBuilder:
        """A builder for an If branch: its own nodes, the parent's initializers (outer scope)."""
        sub = GraphBuilder(self.opset)
        sub.initializers = self.initializers
        return sub

    def subgraph(self, name: str, output: str) -> onnx.GraphProto:
        """This builder's nodes as a graph with one float output (for If branches)."""
        return helper.make_graph(self.nodes, name, [], [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)])

    def weight(self, name: str, array: np.ndarray) -> str:
        """Register an initializer under `name` (a checkpoint key or a derived name)."""
        if name in self.initializers:
            raise ValueError(f"initializer {name} registered twice")
        self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def const(self, values: list[int] | list[float] | np.ndarray, dtype: type = np.int64) -> str:
        """A small shared constant, named after its value."""
        arr = np.asarray(values, dtype=dtype)
        key = (
            "_".join(str(v) for v in arr.ravel().tolist())
            if arr.size <= 8
            else hashlib.sha1(arr.tobytes()).hexdigest()[:12]
        )
        name = f"/const/{arr.dtype}/{list(arr.shape)}/{key}"
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(arr, name)
        return name

    def finish(
        self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], doc: str = ""
    ) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "modernbert",
            inputs,
            outputs,
            initializer=list(self.initializers.values()),
            doc_string=doc,
        )
        opsets = [helper.make_opsetid("", self.opset)]
        if MS_DOMAIN in node_domains(graph):
            opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
        model = helper.make_model(
            graph,
            opset_imports=opsets,
            producer_name="modernbert-edge",
        )
        model.ir_version = 10
        if self.metadata:
            helper.set_model_props(model, self.metadata)
        return model


def node_domains(graph: onnx.GraphProto) -> set[str]:
    """The op domains of a graph's nodes, If branches included ('' for standard ONNX)."""
    domains = set()
    for node in graph.node:
        domains.add(node.domain)
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                domains |= node_domains(a.g)
    return domains


def tensor_info(name: str, elem_type: int, shape: list[str | int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


INT64, FLOAT = TensorProto.INT64, TensorProto.FLOAT
