"""`load`: a model folder (this project's, or an ONNX folder made elsewhere) opened as a Model.

load(folder) ─ read_folder (manifest, config) ─ open_session (the chosen engine) ─ check_graph
             ─ TextTokenizer (tokenizer.json, limited to the model's positions) ─ Model
A folder made elsewhere (no manifest.json): pick_file ─ an onnxruntime session ─ foreign_info (the
graph's outputs, config.json) ─ check_graph ─ the same.
"""

from __future__ import annotations

import os
from pathlib import Path

from modernbert_edge.errors import UserError
from modernbert_edge.runtime.engines import AUTO, ONNXRUNTIME, open_session
from modernbert_edge.runtime.errors import ModelFolderError
from modernbert_edge.runtime.folder import check_graph, foreign_info, read_folder
from modernbert_edge.runtime.foreign import is_foreign, pick_file
from modernbert_edge.runtime.model import Model
from modernbert_edge.runtime.options import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_BATCH_TOKENS,
    DEFAULT_ENGINE,
    DEFAULT_MAX_PADDING,
    DEFAULT_SPINNING,
    DEFAULT_THREADS,
    DEFAULT_TRUNCATION,
    ENGINES,
    TRUNCATION,
    Engine,
    Spinning,
    Truncation,
    check_max_length,
    check_max_padding,
    check_threads,
    choice,
    positive,
    spinning_mode,
)
from modernbert_edge.runtime.session import OrtSession
from modernbert_edge.runtime.tokenize import TextTokenizer


def load(
    model_dir: str | os.PathLike[str],
    threads: int | None = DEFAULT_THREADS,
    *,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    truncation: Truncation | str = DEFAULT_TRUNCATION,
    max_length: int | None = None,
    max_padding: float | None = DEFAULT_MAX_PADDING,
    spinning: Spinning | str | bool = DEFAULT_SPINNING,
    engine: Engine | str = DEFAULT_ENGINE,
    file: str | os.PathLike[str] | None = None,
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
    (runtime.engines.AUTO_RULE). Every option is checked here (runtime/options.py), before the folder
    is read: a bad value is a UserError.
    """
    check_threads(threads)
    truncation = choice("truncation", truncation, TRUNCATION)
    engine = choice("engine", engine, ENGINES)
    positive("batch_tokens", batch_tokens)
    positive("batch_rows", batch_rows)
    check_max_padding(max_padding)
    check_max_length(max_length)
    spinning = spinning_mode(spinning)
    if file is not None:
        file = os.fspath(file)
    folder = Path(model_dir).expanduser()
    if is_foreign(folder):
        model_file = pick_file(folder, file)
        if engine not in (AUTO, ONNXRUNTIME):
            where = folder / model_file
            raise UserError(f"engine {engine!r} runs folders exported with --ops portable; {where} was made elsewhere.")
        session, chosen = OrtSession(folder / model_file, threads=threads, spinning=spinning), ONNXRUNTIME
        info = foreign_info(folder, model_file, session)
    else:
        if file is not None:
            raise UserError(f"file= (--file) picks a model file in a folder without manifest.json; {folder} has one.")
        info = read_folder(folder)
        session, chosen = open_session(info, engine, threads=threads, spinning=spinning)
    info = check_graph(info, session)
    limit = min(info.max_position_embeddings, info.sentence.max_seq_length or info.max_position_embeddings)
    if max_length is not None:
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
