"""The task table: each head is a row (outputs, how the head is built, which transformers class
checks it), not a copy of export code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx
from onnx import helper

from modernbert_edge.contract import (
    END_LOGITS,
    HEADS,
    INPUT_DIMS,
    INPUTS,
    LAST_HIDDEN_STATE,
    LOGITS,
    START_LOGITS,
    task_of_architecture,
)
from modernbert_edge.contract import TASKS as CONTRACT_TASKS
from modernbert_edge.errors import UserError
from modernbert_edge.export.builder import CONTRIB, FLOAT, INT64, OPS, OPSETS, GraphBuilder, tensor_info
from modernbert_edge.export.config import ModernBertConfig
from modernbert_edge.export.encoder import make_encoder
from modernbert_edge.export.heads import (
    make_classifier,
    make_decoder,
    make_pooling,
    make_prediction_head,
    make_selected_rows,
)
from modernbert_edge.export.layout import Layout, make_layout, to_padded
from modernbert_edge.safetensors import Weights

# A head builds from (builder, weights, config, layout, final token stream (1, T, D), key prefix)
# and returns {output name: tensor name}.
HeadFn = Callable[[GraphBuilder, Weights, ModernBertConfig, Layout, str, str], dict[str, str]]


def _hidden_head(
    g: GraphBuilder, w: Weights, cfg: ModernBertConfig, lay: Layout, x: str, prefix: str
) -> dict[str, str]:
    return {LAST_HIDDEN_STATE: to_padded(g, lay, x, cfg.hidden_size, f"/output/{LAST_HIDDEN_STATE}")}


def _fill_mask_head(
    g: GraphBuilder, w: Weights, cfg: ModernBertConfig, lay: Layout, x: str, prefix: str
) -> dict[str, str]:
    def head(rows: str) -> str:
        return make_decoder(g, w, cfg, make_prediction_head(g, w, cfg, rows), prefix)

    return {LOGITS: make_selected_rows(g, lay, x, cfg.hidden_size, head, cfg.vocab_size, f"/output/{LOGITS}")}


def _sequence_head(
    g: GraphBuilder, w: Weights, cfg: ModernBertConfig, lay: Layout, x: str, prefix: str
) -> dict[str, str]:
    hidden = to_padded(g, lay, x, cfg.hidden_size, "/output/hidden")
    pooled = make_pooling(g, cfg, lay, hidden)
    return {LOGITS: make_classifier(g, w, cfg, make_prediction_head(g, w, cfg, pooled), cfg.num_labels)}


def _token_head(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, lay: Layout, x: str, prefix: str) -> dict[str, str]:
    logits = make_classifier(g, w, cfg, make_prediction_head(g, w, cfg, x), cfg.num_labels)
    return {LOGITS: to_padded(g, lay, logits, cfg.num_labels, f"/output/{LOGITS}")}


def _qa_head(g: GraphBuilder, w: Weights, cfg: ModernBertConfig, lay: Layout, x: str, prefix: str) -> dict[str, str]:
    if cfg.num_labels != 2:
        raise UserError(f"a question-answering checkpoint needs num_labels = 2, config.json has {cfg.num_labels}.")
    logits = make_classifier(g, w, cfg, make_prediction_head(g, w, cfg, x), 2)
    logits = to_padded(g, lay, logits, 2, "/output/logits")  # (B, S, 2)
    start, end = g.op("Split", [logits, g.const([1, 1])], "/output/Split", outputs=2, axis=-1)
    return {
        START_LOGITS: g.op("Squeeze", [start, g.const([-1])], f"/output/{START_LOGITS}"),
        END_LOGITS: g.op("Squeeze", [end, g.const([-1])], f"/output/{END_LOGITS}"),
    }


@dataclass(frozen=True)
class Task:
    name: str  # a task of the contract (modernbert_edge/contract.py), which names its outputs and class
    head: HeadFn
    head_keys: tuple[str, ...]  # checkpoint tensor prefixes the head consumes
    atol: float = 1e-4  # parity tolerance against PyTorch (fp32)

    @property
    def architecture(self) -> str:
        """The transformers class whose checkpoint carries this head."""
        return HEADS[self.name].architecture

    @property
    def outputs(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(name, dims) of each graph output."""
        return HEADS[self.name].outputs


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("feature-extraction", _hidden_head, ()),
        Task("fill-mask", _fill_mask_head, ("head.", "decoder.")),
        Task("text-classification", _sequence_head, ("head.", "classifier.")),
        Task("token-classification", _token_head, ("head.", "classifier.")),
        Task("question-answering", _qa_head, ("head.", "classifier.")),
    )
}
assert tuple(TASKS) == CONTRACT_TASKS, "a head for every task of the contract, in its order"


def choose_task(cfg: ModernBertConfig, task: str | None) -> Task:
    """The task named by --task, or the one config.architectures implies."""
    if task is not None:
        if task not in TASKS:
            raise UserError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}.")
        return TASKS[task]
    for arch in cfg.architectures:
        found = task_of_architecture(arch)
        if found is not None:
            return TASKS[found]
    if cfg.architectures:
        raise UserError(
            f"config.json's architectures {list(cfg.architectures)} name no supported head; "
            f"pass --task (one of: {', '.join(TASKS)})."
        )
    return TASKS["feature-extraction"]


def key_prefix(w: Weights) -> str:
    """'model.' for head checkpoints (ModernBertFor*), '' for a bare ModernBertModel."""
    if "model.embeddings.tok_embeddings.weight" in w:
        return "model."
    if "embeddings.tok_embeddings.weight" in w:
        return ""
    raise UserError("the checkpoint has no embeddings.tok_embeddings.weight tensor: is it a ModernBERT checkpoint?")


def build_graph(cfg: ModernBertConfig, w: Weights, task: Task, ops: str = CONTRIB) -> tuple[onnx.ModelProto, list[str]]:
    """The whole graph for a task, with the attention ops of flavour `ops` (builder.OPS); returns the
    model and the checkpoint tensors it left unused (only another head's tensors may be left, when
    exporting a head checkpoint's encoder)."""
    if ops not in OPS:
        raise UserError(f"unknown --ops {ops!r}; choose one of: {', '.join(OPS)}.")
    prefix = key_prefix(w)
    if task.head_keys and not any(k.startswith(task.head_keys) for k in w.names()):
        raise UserError(
            f"task {task.name} needs a {task.architecture} checkpoint, but the checkpoint has no "
            f"{' / '.join(k.rstrip('.') + '*' for k in task.head_keys)} tensors (config.architectures = "
            f"{list(cfg.architectures)})."
        )
    g = GraphBuilder(OPSETS[ops])
    lay = make_layout(g, cfg, ops)
    x = make_encoder(g, w, cfg, lay, prefix)
    outputs = task.head(g, w, cfg, lay, x, prefix)
    ignorable = ("head.", "decoder.", "classifier.") if task.name == "feature-extraction" else ()
    unused = w.unused()
    stray = [k for k in unused if not k.startswith(ignorable)]
    if stray:
        shown = ", ".join(stray[:8]) + (f" and {len(stray) - 8} more" if len(stray) > 8 else "")
        raise UserError(f"the checkpoint has tensors the {task.name} graph does not use: {shown}.")
    for name, tensor in outputs.items():  # the contract names are the graph outputs themselves
        g.nodes.append(helper.make_node("Identity", [tensor], [name], name=f"/output/{name}/Identity"))
    dims = dict(task.outputs)
    infos = [tensor_info(name, FLOAT, [_dim(cfg, d) for d in dims[name]]) for name in outputs]
    inputs = [tensor_info(name, INT64, list(INPUT_DIMS)) for name in INPUTS]
    model = g.finish(inputs, infos, doc=f"ModernBERT {task.name}, exported by modernbert-edge")
    return model, unused


def _dim(cfg: ModernBertConfig, d: str) -> str | int:
    return {"hidden": cfg.hidden_size, "vocab": cfg.vocab_size, "labels": cfg.num_labels}.get(d, d)
