"""One benchmark worker: a process that loads one system's model once and times it on request.

    coordinator ── spec ──> serve(conn, spec): set threads, import, load (timed) ── ("ready", load_s, import_s)
                ── ("run", case, keep) ──> run the case's batches (timed) ── ("done", seconds, outputs?)
                ── ("rss",) ──> ("rss", peak MB)        ── ("stop",) ──> exit
                ── ("describe",) ──> ("describe", what the folder holds)   (kind "folder" only)

A case is a list of token-id rows and how to batch them: "fixed" (input order, `batch_rows` rows
per batch, right-padded; batches built before the clock starts) or "budget" (the runtime's
length-sorted token-budget plan, built inside the timed region since it is part of the runtime's
work). Outputs, one row per input row in input order, are what fidelity needs: the mean-pooled
last hidden state (embeddings), the top-1 token id at the masked position (fill-mask), or the
logits (classification).

Kinds: "torch" (transformers, SDPA), "torch-int8" (the same with torch.ao dynamic int8 nn.Linear),
"onnx" (a .onnx file in a plain session), "ours" (this project's runtime), "openvino" (the runtime
on its OpenVINO engine), "gemm" (the int8-GEMM-only lower-bound graph of lowerbound.py), and
"folder": any folder `load()` accepts, run on texts through its task method (FolderRunner: tokenizer
included; a run answers the seconds of each call, and ("describe",) what the folder holds).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

import numpy as np

from modernbert_edge.contract import feeds
from modernbert_edge.runtime.batching import pad
from modernbert_edge.runtime.numerics import pool
from modernbert_edge.runtime.session import create_session
from modernbert_edge.timing import clock, peak_rss_mb

GEMM_CHUNK = 2048  # the GEMM-only graph runs on at most this many tokens per call


# ── the model callables: (ids, mask) -> the job's raw output array ────────────────────────────────


def _load_torch(path: str, job: str, architecture: str, threads: int, int8: bool = False) -> tuple[Callable, int]:
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = getattr(transformers, architecture).from_pretrained(path, attn_implementation="sdpa").eval()
    if int8:  # what PyTorch users reach for: int8 weights, activations quantized per call
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    def call(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        return (out.last_hidden_state if job == "embeddings" else out.logits).numpy()

    return call, pad


def _load_onnx(path: str, threads: int, pad: int) -> tuple[Callable, int]:
    session = create_session(path, threads)
    output = session.get_outputs()[0].name

    def call(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return session.run([output], feeds(ids, mask))[0]

    return call, pad


def _load_ours(path: str, threads: int, engine: str = "onnxruntime") -> tuple[Callable, int, Callable]:
    """This project's runtime: its session, its batch plan, and fill-mask on marked rows (run(mask_positions=...))."""
    from modernbert_edge.runtime import load

    model = load(path, threads=threads, engine=engine)
    name = model.info.outputs[0]

    def call(ids: np.ndarray, mask: np.ndarray, pos: np.ndarray | None = None) -> np.ndarray:
        if pos is None or not model.decodes_masked_rows_only:
            return model.run(ids, mask)[name]
        # fill-mask as the runtime runs it: vocabulary logits at the masked positions only -> (B, V)
        return model.run(ids, mask, mask_positions=np.arange(len(ids)) * ids.shape[1] + pos)[name][0]

    return call, model.info.pad_token_id, model.plan


# ── extraction of what fidelity needs ─────────────────────────────────────────────────────────────


def extract(job: str, out: np.ndarray, mask: np.ndarray, mask_pos: np.ndarray | None) -> np.ndarray:
    """Per row: mean-pooled hidden state (embeddings), top-1 id at the mask (fill-mask), logits."""
    if job == "embeddings":  # (B, S, D) -> (B, D)
        return pool(out, mask, "mean")
    if job == "fill-mask":  # (B, S, V) or, at the masked positions only, (B, V) -> (B,)
        return (out if out.ndim == 2 else out[np.arange(len(out)), mask_pos]).argmax(-1)
    return np.asarray(out, dtype=np.float32)  # (B, labels)


class Runner:
    """Loads one system and runs cases on it."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.job = spec["job"]
        kind, path, threads = spec["kind"], spec["path"], spec["threads"]
        self.plan = None
        if kind in ("torch", "torch-int8"):
            self.call, self.pad = _load_torch(path, self.job, spec["architecture"], threads, kind == "torch-int8")
        elif kind == "onnx":
            self.call, self.pad = _load_onnx(path, threads, spec.get("pad_token_id", 0))
        elif kind in ("ours", "openvino"):
            self.call, self.pad, self.plan = _load_ours(
                path, threads, "openvino" if kind == "openvino" else "onnxruntime"
            )
        elif kind == "gemm":
            self.session = create_session(path, threads)  # built by lowerbound.write_gemm_graph
        else:
            raise ValueError(f"unknown worker kind {kind!r}")

    def prepare(self, case: dict) -> object:
        """Everything that is built before the clock starts."""
        rows = case["rows"]
        if self.spec["kind"] == "gemm":
            d = self.spec["dims"]["hidden_size"]
            total = sum(len(r) for r in rows)
            sizes = [min(GEMM_CHUNK, total - i) for i in range(0, total, GEMM_CHUNK)]
            rng = np.random.default_rng(0)
            chunk_feeds = [{"x": rng.standard_normal((t, d), dtype=np.float32)} for t in sizes]
            if "h" in {i.name for i in self.session.get_inputs()}:  # fill-mask head: the masked rows only
                for j, feed in enumerate(chunk_feeds):  # one mask per text, fed with the first chunk
                    feed["h"] = rng.standard_normal((len(rows) if j == 0 else 1, d), dtype=np.float32)
            return chunk_feeds
        if case["batching"] == "budget" and self.plan is not None:
            return None
        n = case["batch_rows"]
        return [list(range(i, min(i + n, len(rows)))) for i in range(0, len(rows), n)]

    def run(self, case: dict, prepared: object, keep: bool) -> tuple[float, np.ndarray | None]:
        if self.spec["kind"] == "gemm":

            def run_chunks() -> None:
                for feed in prepared:
                    self.session.run(None, feed)

            return clock(run_chunks), None
        rows, mask_pos = case["rows"], case.get("mask_pos")
        results: list = [None] * len(rows)
        if prepared is None:  # budget plan: inside the timed region
            t0 = time.perf_counter()
            batches = self.plan([len(r) for r in rows])
            fed = [(b, *pad([rows[i] for i in b], self.pad)) for b in batches]
        else:
            fed = [(b, *pad([rows[i] for i in b], self.pad)) for b in prepared]
            t0 = time.perf_counter()
        for b, ids, mask in fed:
            pos = None if mask_pos is None else np.asarray([mask_pos[i] for i in b])
            out = self.call(ids, mask, pos) if self.spec["kind"] in ("ours", "openvino") else self.call(ids, mask)
            if keep:
                for i, r in zip(b, extract(self.job, out, mask, pos), strict=True):
                    results[i] = r
            del out
        elapsed = time.perf_counter() - t0
        return elapsed, (np.stack(results) if keep else None)


# ── a model folder on texts (`mbedge bench MODEL_DIR ...`) ────────────────────────────────────────

QA_QUESTION = "What is this about?"  # asked of every plain text by a question-answering folder


def with_mask(text: str, mask_token: str) -> str:
    """The text as given when it holds the mask token, else with its middle word replaced by it."""
    if mask_token in text:
        return text
    words = text.split(" ")
    spots = [i for i, w in enumerate(words) if w.strip()]
    words[spots[len(spots) // 2]] = mask_token
    return " ".join(words)


def _top1_ids(result: list) -> list[int]:
    """fill_mask's result for one text (one mask: a list of predictions; several: a list of lists) -> top-1 ids."""
    masks = result if result and isinstance(result[0], list) else [result]
    return [int(preds[0]["token"]) for preds in masks]


# task -> (call(model, inputs), what fidelity keeps of one input's result)
FOLDER_CALLS: dict[str, tuple[Callable, Callable]] = {
    "feature-extraction": (lambda m, x: m.embed(x), lambda r: np.asarray(r, dtype=np.float32)),
    "fill-mask": (lambda m, x: m.fill_mask(x), _top1_ids),
    "text-classification": (
        lambda m, x: m.classify(x, top_k=None),
        lambda r: {d["label"]: float(d["score"]) for d in r},
    ),
    "token-classification": (
        lambda m, x: m.tag(x),
        lambda r: sorted((int(e["start"]), int(e["end"]), str(e.get("entity_group", e.get("entity")))) for e in r),
    ),
    "question-answering": (
        lambda m, x: m.answer([q for q, _ in x], [c for _, c in x]),
        lambda r: (int(r["start"]), int(r["end"])),
    ),
}


class FolderRunner:
    """A folder loaded with the runtime's `load()`; a case is texts cut into calls of `batch` texts each."""

    def __init__(self, spec: dict) -> None:
        from modernbert_edge.runtime import load

        self.spec = spec
        self.model = load(spec["path"], threads=spec["threads"], engine=spec["engine"], file=spec.get("file"))

    def describe(self) -> dict:
        """What the folder holds, and the process's peak RSS after loading it."""
        d = self.model.describe()
        tok = self.model.tokenizer
        return {
            "task": d["task"],
            "precision": d["precision"],
            "engine": self.model.engine,
            "engine_line": d["engine"],
            "model_file": d["model_file"],
            "model_bytes": d["model_bytes"],
            "mask_token": None if tok is None else tok.mask_token,
            "outputs": d["outputs"],  # {name: shape}: hidden states, and the head's size
            "load_rss_mb": peak_rss_mb(),
        }

    def prepare(self, case: dict) -> tuple[list[tuple[list[int], list]], list[int]]:
        """The calls (input indices, inputs) of one pass and their real tokens: every call holds exactly
        `batch` inputs, taken in order and wrapping around, until each input has run at least once."""
        task, inputs, b = case["task"], case["inputs"], case["batch"]
        if task == "fill-mask":
            mask = self.model.tokenizer.mask_token if self.model.tokenizer else None
            inputs = [with_mask(t, mask) for t in inputs] if mask else inputs
        n_calls = -(-len(inputs) // b)
        calls = []
        for c in range(n_calls):
            idx = [(c * b + j) % len(inputs) for j in range(b)]
            calls.append((idx, [inputs[i] for i in idx]))
        tok = self.model.tokenizer
        if tok is None:  # the task method raises the runtime's own error (the folder has no tokenizer)
            FOLDER_CALLS[task][0](self.model, calls[0][1])
        tokens = []
        for _, x in calls:
            encoded = tok.encode_pairs(x) if case["pair"] else tok.encode(x)
            tokens.append(sum(len(e.ids) for e in encoded if hasattr(e, "ids")))
        return calls, tokens

    def run(self, case: dict, prepared: tuple, keep: bool) -> tuple[list[float], dict]:
        """One pass: the seconds of each call, each call's tokens, and (keep) what fidelity needs per input."""
        call, extract = FOLDER_CALLS[case["task"]]
        calls, tokens = prepared
        times, kept = [], {}
        for idx, x in calls:
            t0 = time.perf_counter()
            result = call(self.model, x)
            times.append(time.perf_counter() - t0)
            if keep:
                for i, r in zip(idx, result, strict=True):
                    kept.setdefault(i, extract(r))
        return times, {"tokens": tokens, "results": [kept[i] for i in sorted(kept)] if keep else None}


def serve(conn: Connection, spec: dict) -> None:
    """The worker process's main loop (see the module docstring)."""
    threads = str(spec["threads"])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = threads
    try:
        t0 = time.perf_counter()
        if spec["kind"] in ("torch", "torch-int8"):  # imports are timed apart from loading the model
            import torch  # noqa: F401
            import transformers  # noqa: F401
        else:
            import onnxruntime  # noqa: F401
        t1 = time.perf_counter()
        runner = FolderRunner(spec) if spec["kind"] == "folder" else Runner(spec)
        conn.send(("ready", time.perf_counter() - t1, t1 - t0))
    except Exception as e:  # reported to the coordinator, which records the failure
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    prepared: dict[str, object] = {}
    parent = os.getppid()
    while True:
        while not conn.poll(2.0):
            if os.getppid() != parent:  # the coordinator is gone
                return
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] == "stop":
            return
        if msg[0] == "rss":
            conn.send(("rss", peak_rss_mb()))
            continue
        if msg[0] == "describe":
            conn.send(("describe", runner.describe()))
            continue
        _, case, keep = msg
        try:
            if case["label"] not in prepared:
                prepared = {case["label"]: runner.prepare(case)}
            seconds, outputs = runner.run(case, prepared[case["label"]], keep)
            conn.send(("done", seconds, outputs))
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {e}"))
