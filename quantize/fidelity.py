"""How closely one model follows another: the report behind `mbedge quantize` and `mbedge compare`.

Both models run on the same batches (the calibration slice and the held-out slice). For every
real token: the cosine between the two final hidden states (the final-norm output, read as an
extra output of an in-memory copy; the saved graphs keep their contract). For the head: top-1
agreement at masked positions (fill-mask), label agreement (classification), start/end agreement
(question answering), and the largest logit difference. When either graph was made elsewhere (it
has no final-norm tensor by this project's name), the cosine is that of the graph's final output
instead: last_hidden_state or logits per real token, (B, L) logits per row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

from modernbert_edge.contract import ATTENTION_MASK, END_LOGITS, INPUT_IDS, LAST_HIDDEN_STATE, LOGITS, START_LOGITS
from modernbert_edge.errors import UserError
from modernbert_edge.export.names import FINAL_HIDDEN
from modernbert_edge.quantize import kernels
from modernbert_edge.quantize.calibration import Batch, CalibrationSet
from modernbert_edge.quantize.smoothing import serialize_with_outputs, session_with_outputs
from modernbert_edge.runtime.session import ZERO_INPUTS, run_graph
from modernbert_edge.timing import cosines as _cosines

MASK_FRACTION = 0.15
HEAD_OUTPUTS = (LOGITS, START_LOGITS, END_LOGITS)


def load_model(folder: str | Path, file: str | None = None) -> tuple[onnx.ModelProto, dict]:
    """A model folder's graph (weights loaded) and manifest; for an ONNX folder made elsewhere (no
    manifest.json), the manifest the runtime reads it with, and `file` picks its model file."""
    from modernbert_edge.manifest import read_manifest
    from modernbert_edge.runtime.foreign import foreign_manifest, is_foreign, pick_file

    folder = Path(folder)
    if is_foreign(folder):
        model_file = pick_file(folder, file)
        model = onnx.load(str(folder / model_file))
        outputs = {
            o.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in o.type.tensor_type.shape.dim]
            for o in model.graph.output
        }
        return model, foreign_manifest(folder, model_file, outputs)
    if file is not None:
        raise UserError(f"--file picks a model file in a folder without manifest.json; {folder} has one.")
    manifest = read_manifest(folder)
    path = folder / manifest.get("model_file", "model.onnx")
    if not path.is_file():
        raise UserError(f"{folder} has no {path.name}; its manifest names it as the model file.")
    return onnx.load(str(path)), manifest


def masked_batches(batches: Sequence[Batch], mask_id: int | None, seed: int = 0) -> list[tuple[Batch, np.ndarray]]:
    """Each batch with ~15% of its inner real tokens replaced by the mask token (when there is
    one), and the (B, S) bool map of those positions (at least one per row)."""
    rng = np.random.default_rng(seed)
    out = []
    for b in batches:
        ids, mask = b.input_ids.copy(), b.attention_mask
        picked = np.zeros(ids.shape, dtype=bool)
        for r in range(ids.shape[0]):
            n = int(mask[r].sum())
            inner = np.arange(1, n - 1) if n > 2 else np.arange(n)
            k = max(1, int(round(MASK_FRACTION * len(inner))))
            picked[r, rng.choice(inner, size=min(k, len(inner)), replace=False)] = True
        if mask_id is not None:
            ids[picked] = mask_id
        out.append((Batch(ids, mask), picked))
    return out


def _head_metrics(task: str, outs_a: dict, outs_b: dict, batch: Batch, picked: np.ndarray) -> dict[str, list]:
    """Counts of agreeing predictions and the logit differences of one batch."""
    valid = batch.attention_mask.astype(bool)
    m: dict[str, list] = {"agree": [], "diff": [], "ref_max": []}
    for name, a in outs_a.items():
        if name not in HEAD_OUTPUTS:
            continue  # e.g. hidden states beside the logits: the cosine covers them
        b = outs_b[name]
        if task == "fill-mask":
            a, b = a[picked], b[picked]  # (P, V)
            m["agree"].extend((a.argmax(-1) == b.argmax(-1)).tolist())
        elif task == "text-classification":
            m["agree"].extend((a.argmax(-1) == b.argmax(-1)).tolist())
        elif task == "token-classification":
            a, b = a[valid], b[valid]
            m["agree"].extend((a.argmax(-1) == b.argmax(-1)).tolist())
        elif task == "question-answering":
            a, b = np.where(valid, a, -np.inf), np.where(valid, b, -np.inf)
            m["agree"].extend((a.argmax(-1) == b.argmax(-1)).tolist())
            a, b = a[valid], b[valid]
        else:
            continue
        m["diff"].append(float(np.abs(a - b).max()) if a.size else 0.0)
        m["ref_max"].append(float(np.abs(a).max()) if a.size else 0.0)
    return m


AGREEMENT = {
    "fill-mask": "fill-mask top-1 agreement at masked positions",
    "text-classification": "label agreement",
    "token-classification": "token label agreement",
    "question-answering": "start/end agreement",
}


def compare_models(
    model_a: onnx.ModelProto,
    model_b: onnx.ModelProto,
    task: str,
    data: CalibrationSet,
    progress: Callable[[str], None] = lambda _m: None,
    threads: int = 0,
    engine: str = "onnxruntime",
) -> dict:
    """The fidelity report of model_b against the reference model_a, per slice (see module doc).

    engine: what runs model_b, "onnxruntime" or "openvino" (the engine that will run it: its
    kernels round differently); model_a always runs on onnxruntime."""
    ours = all(FINAL_HIDDEN in {o for n in m.graph.node for o in n.output} for m in (model_a, model_b))
    extra = [FINAL_HIDDEN] if ours else []  # a graph made elsewhere: its final output is compared instead
    sessions = [session_with_outputs(model_a, extra, threads)]
    if engine == "openvino":
        sessions.append(_OpenVinoOutputs(serialize_with_outputs(model_b, extra), threads))
    else:
        sessions.append(session_with_outputs(model_b, extra, threads))
    names = [o.name for o in sessions[0].get_outputs()][: -1 if ours else None]
    wanted = names + extra
    zeros = [[n for n in ZERO_INPUTS if n in {i.name for i in m.graph.input}] for m in (model_a, model_b)]
    slices = {}
    for label, batches in (("calibration", data.calibration), ("held-out", data.heldout)):
        cos: list[np.ndarray] = []
        agg: dict[str, list] = {"agree": [], "diff": [], "ref_max": []}
        for i, (batch, picked) in enumerate(masked_batches(batches, data.mask_token_id), 1):
            progress(f"evaluating {label}: batch {i}/{len(batches)}")
            feeds = batch.feeds()
            a = run_graph(
                sessions[0],
                wanted,
                feeds | {n: np.zeros_like(batch.input_ids) for n in zeros[0]},
                "the reference model",
            )
            b = run_graph(
                sessions[1], wanted, feeds | {n: np.zeros_like(batch.input_ids) for n in zeros[1]}, "the compared model"
            )
            if ours:
                cos.append(_cosines(a[-1], b[-1]))
            else:
                cos.append(_final_cosines(dict(zip(names, a, strict=True)), dict(zip(names, b, strict=True)), batch))
            m = _head_metrics(
                task,
                dict(zip(names, a[: len(names)], strict=True)),
                dict(zip(names, b[: len(names)], strict=True)),
                batch,
                picked,
            )
            for k in agg:
                agg[k].extend(m[k])
        c = np.concatenate(cos)
        entry = {"tokens": int(c.size), "cosine_mean": float(c.mean()), "cosine_worst": float(c.min())}
        if agg["agree"]:
            entry["agreement"] = float(np.mean(agg["agree"]))
            entry["agreement_count"] = [int(np.sum(agg["agree"])), len(agg["agree"])]
        if agg["diff"]:
            entry["max_logit_diff"] = max(agg["diff"])
            entry["max_abs_logit"] = max(agg["ref_max"])
        slices[label] = entry
    worst = min(s["cosine_worst"] for s in slices.values())
    return {
        "task": task,
        "engine": engine,
        "kernel_classes": kernel_classes((model_a, model_b), worst, engine),
        "data": {"source": data.source, "texts": data.texts},
        "slices": slices,
        "cosine_worst": worst,
        "cosine_mean": float(
            sum(s["cosine_mean"] * s["tokens"] for s in slices.values()) / sum(s["tokens"] for s in slices.values())
        ),
        "agreement": (
            min(s["agreement"] for s in slices.values()) if all("agreement" in s for s in slices.values()) else None
        ),
    }


def kernel_classes(models: Sequence[onnx.ModelProto], cosine_worst: float, engine: str = "onnxruntime") -> dict:
    """The fidelity of a comparison on each int8 kernel class (modernbert_edge/cpu.py): measured on
    this CPU's class; for the other, the same figure where no int8 weight pair of either model can
    saturate (then both classes compute the same integers, quantize/kernels.py), else not covered."""
    from modernbert_edge.cpu import KERNEL_CLASSES, cpu_info

    cpu = cpu_info()
    checks = [kernels.pair_check(m) for m in models]
    check = {k: sum(c[k] for c in checks) for k in ("int8_weights", "overflowing_pairs", "unresolved")}
    check["largest_pair_sum"] = max(c["largest_pair_sum"] for c in checks)
    if not check["int8_weights"] and not check["unresolved"]:
        same = "no int8 products: the same on every class"
    elif check["overflowing_pairs"] or check["unresolved"]:
        same = None
    else:
        same = (
            f"simulated: the same int8 products as {cpu.kernel_class} (no same-sign weight pair sums above "
            f"{kernels.PAIR_LIMIT}, so none can saturate); float kernels round differently"
        )
    classes = {}
    for cls in KERNEL_CLASSES:
        if cls == cpu.kernel_class:
            classes[cls] = {"cosine_worst": cosine_worst, "how": f"measured with {engine} on {cpu.name} ({cpu.kernel})"}
        elif same is not None:
            classes[cls] = {"cosine_worst": cosine_worst, "how": same}
        else:
            why = f"{check['overflowing_pairs']} int8 weight pairs can saturate AVX2's int16 pair sums"
            if check["unresolved"]:
                why = f"{check['unresolved']} int8 products have weights computed at run time"
            classes[cls] = {"cosine_worst": None, "how": f"not covered: {why}"}
    return {"cpu": cpu.to_dict(), "weights": check, "classes": classes}


def _final_cosines(outs_a: dict, outs_b: dict, batch: Batch) -> np.ndarray:
    """Cosines of a graph's final output: per real token of last_hidden_state or (B, S, L) logits, per
    row of (B, L) logits, per row of start/end logits over the real tokens (padded positions zeroed)."""
    valid = batch.attention_mask.astype(bool)
    name = next(n for n in (LAST_HIDDEN_STATE, LOGITS, START_LOGITS) if n in outs_a)
    a, b = outs_a[name], outs_b[name]
    if a.ndim == 3:
        return _cosines(a[valid], b[valid])
    if name == START_LOGITS:
        ends = [np.where(valid, o[END_LOGITS], 0.0) for o in (outs_a, outs_b)]
        return np.concatenate([_cosines(np.where(valid, a, 0.0), np.where(valid, b, 0.0)), _cosines(*ends)])
    return _cosines(a, b)


def check_min_cosine(min_cosine: float) -> float:
    """The gate's threshold: a cosine in (0, 1]."""
    if not 0 < min_cosine <= 1:  # NaN fails too
        raise UserError(f"--min-cosine must be a number in (0, 1], got {min_cosine}.")
    return min_cosine


class _OpenVinoOutputs:
    """model_b on OpenVINO, answering run(None, feeds) with its outputs in graph order, as ORT does."""

    def __init__(self, model: bytes, threads: int) -> None:
        from modernbert_edge.runtime.engines import OPENVINO_CONFIGS, OpenVinoSession

        self._session = OpenVinoSession(model, threads or None, OPENVINO_CONFIGS["int8-static"])  # as the runtime

    def run(self, _names: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self._session.run(feeds[INPUT_IDS], feeds[ATTENTION_MASK]).values())


def apply_gate(report: dict, min_cosine: float, force: bool) -> dict:
    """Add the gate's verdict: passed, failed, or failed but forced."""
    check_min_cosine(min_cosine)
    classes = report.get("kernel_classes", {}).get("classes", {})
    covered = [c["cosine_worst"] for c in classes.values() if c["cosine_worst"] is not None]
    uncovered = sorted(k for k, c in classes.items() if c["cosine_worst"] is None)
    ok = min([report["cosine_worst"], *covered]) >= min_cosine and not uncovered
    report["gate"] = {
        "min_cosine": min_cosine,
        "status": "passed" if ok else ("forced" if force else "failed"),
        "kernel_classes": sorted(classes),  # what the gate covers; every class, or it fails
    }
    if uncovered:
        report["gate"]["not_covered"] = uncovered
    return report


def check_gate(report: dict, mode: str) -> None:
    """Raise the UserError that says why the gate failed (nothing was written), unless it passed or was forced."""
    gate = report["gate"]
    if gate["status"] != "failed":
        return
    reasons = []
    if report["cosine_worst"] < gate["min_cosine"]:
        reasons.append(
            f"its worst-token cosine to fp32 is {report['cosine_worst']:.5f}, below --min-cosine {gate['min_cosine']}"
        )
    kc = report["kernel_classes"]
    for cls in gate.get("not_covered", []):
        reasons.append(
            f"the gate, measured on {kc['cpu']['int8_kernel_class']} int8 kernels, does not cover {cls} ones "
            f"({kc['classes'][cls]['how'].removeprefix('not covered: ')})"
        )
    why = "; ".join(reasons)
    raise UserError(f"the {mode} model failed the gate: {why}; nothing was written (pass --force to write it anyway).")


def format_report(report: dict, title: str) -> str:
    """The report as a small table, one column per slice."""
    slices = report["slices"]
    cols = list(slices)
    rows: list[tuple[str, list[str]]] = [
        ("tokens", [str(slices[c]["tokens"]) for c in cols]),
        ("token cosine, mean", [f"{slices[c]['cosine_mean']:.5f}" for c in cols]),
        ("token cosine, worst", [f"{slices[c]['cosine_worst']:.5f}" for c in cols]),
    ]
    if all("agreement" in slices[c] for c in cols):
        rows.append(
            (
                AGREEMENT[report["task"]],
                ["{:.1f} % ({}/{})".format(100 * slices[c]["agreement"], *slices[c]["agreement_count"]) for c in cols],
            )
        )
    if all("max_logit_diff" in slices[c] for c in cols):
        rows.append(
            (
                "largest logit difference",
                [f"{slices[c]['max_logit_diff']:.3g} (of {slices[c]['max_abs_logit']:.3g})" for c in cols],
            )
        )
    w0 = max(len(r[0]) for r in rows + [(title, [])])
    widths = [max(len(c), *(len(r[1][i]) for r in rows)) for i, c in enumerate(cols)]
    lines = [f"{title:<{w0}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cols, widths, strict=True))]
    for name, vals in rows:
        lines.append(f"{name:<{w0}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(vals, widths, strict=True)))
    for cls, entry in report.get("kernel_classes", {}).get("classes", {}).items():
        value = "not covered" if entry["cosine_worst"] is None else f"{entry['cosine_worst']:.5f}"
        lines.append(f"worst-token cosine, {cls} int8 kernels: {value} ({entry['how']})")
    gate = report.get("gate")
    if gate:
        verdict = {"passed": "passed", "failed": "FAILED", "forced": "FAILED (written anyway: --force)"}[gate["status"]]
        sign = ">=" if report["cosine_worst"] >= gate["min_cosine"] else "<"
        uncovered = f", {', '.join(gate['not_covered'])} not covered" if gate.get("not_covered") else ""
        lines.append(
            f"gate: worst-token cosine {report['cosine_worst']:.5f} {sign} {gate['min_cosine']}{uncovered}: {verdict}"
        )
    return "\n".join(lines)
