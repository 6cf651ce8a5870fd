"""`load`: a model folder (this project's, or an ONNX folder made elsewhere) opened as a Model.

load(folder) ─ open_folder (manifest or foreign graph, session on the chosen engine, check_graph)
             ─ TextTokenizer (tokenizer.json, limited to the model's positions) ─ Model
"""

from __future__ import annotations

from pathlib import Path

from modernbert_edge.errors import UserError
from modernbert_edge.runtime.batching import DEFAULT_BATCH_ROWS, DEFAULT_BATCH_TOKENS, DEFAULT_MAX_PADDING
from modernbert_edge.runtime.engines import AUTO, ONNXRUNTIME, open_session
from modernbert_edge.runtime.errors import ModelFolderError
from modernbert_edge.runtime.folder import ModelInfo, open_folder
from modernbert_edge.runtime.model import Model
from modernbert_edge.runtime.session import DEFAULT_SPINNING, OrtSession, Session, check_threads, spinning_mode
from modernbert_edge.runtime.tokenize import TRUNCATION, TextTokenizer


def load(
    model_dir: str | Path,
    threads: int | None = None,
    *,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    truncation: str = "truncate",
    max_length: int | None = None,
    max_padding: float | None = DEFAULT_MAX_PADDING,
    spinning: bool | str = DEFAULT_SPINNING,
    engine: str = AUTO,
    file: str | None = None,
) -> Model:
    """Load a folder written by `mbedge export` or `mbedge quantize` for CPU inference, or an ONNX folder
    made elsewhere (an optimum export, a Hub repository's onnx/), whose model file `file` picks.

    threads: intra-op threads (None or 0: one per physical core). batch_tokens / batch_rows: the
    padded tokens and rows of one batch. truncation: "truncate" (warn) or "error" for inputs longer
    than max_length (default and upper bound: the model's max_position_embeddings). max_padding:
    the share of a batch's tokens that may be padding (default 0.0: only equal lengths share a
    batch, which keeps attention on its mask-free path; None or 1: any, within batch_tokens).
    spinning: what idle ONNX Runtime threads do between ops and calls, "off" (default: they sleep),
    "brief" or "on" (they spin: faster hand-offs on an idle machine, busy cores between calls); see
    runtime.session.SPINNING.
    engine: "onnxruntime", "openvino" (folders exported with --ops portable) or "auto"
    (runtime.engines.AUTO_RULE).
    """
    check_threads(threads)
    if truncation not in TRUNCATION:
        raise UserError(f"truncation must be one of {', '.join(TRUNCATION)}, got {truncation!r}.")
    if (
        any(isinstance(v, bool) or not isinstance(v, int) for v in (batch_tokens, batch_rows))
        or min(batch_tokens, batch_rows) < 1
    ):
        raise UserError(f"batch_tokens and batch_rows must be >= 1, got {batch_tokens} and {batch_rows}.")
    if max_padding is not None and not (isinstance(max_padding, (int, float)) and 0.0 <= max_padding <= 1.0):
        raise UserError(f"max_padding must be between 0 and 1, got {max_padding}.")
    try:
        spinning = spinning_mode(spinning)
    except ValueError as e:
        raise UserError(f"{e}.") from None
    chosen = ONNXRUNTIME

    def open_model(info: ModelInfo | None, path: Path) -> Session:
        """The model file's session on the chosen engine (info None: a folder made elsewhere)."""
        nonlocal chosen
        if info is not None:
            session, chosen = open_session(info, engine, threads=threads, spinning=spinning)
            return session
        if engine not in (AUTO, ONNXRUNTIME):
            raise UserError(f"engine {engine!r} runs folders exported with --ops portable; {path} was made elsewhere.")
        return OrtSession(path, threads=threads, spinning=spinning)

    info, session = open_folder(model_dir, file, open_model)
    limit = min(info.max_position_embeddings, info.sentence.max_seq_length or info.max_position_embeddings)
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
            raise UserError(f"max_length must be at least 3 tokens, got {max_length}.")
        limit = min(limit, max_length)
    tokenizer = TextTokenizer.from_folder(info.folder, limit, info.manifest.get("tokenizer_files") or ())
    if tokenizer is not None and tokenizer.max_id >= info.vocab_size:
        raise ModelFolderError(
            f"{info.folder}'s tokenizer.json has token ids up to {tokenizer.max_id}, but the model's "
            f"vocabulary has {info.vocab_size}: the tokenizer is not this model's."
        )
    model = Model(
        info,
        session,
        tokenizer,
        batch_tokens=batch_tokens,
        batch_rows=batch_rows,
        truncation=truncation,
        max_padding=max_padding,
    )
    model.engine = chosen
    return model
