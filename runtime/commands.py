"""CLI commands of the runtime: `mbedge run` and `mbedge info`.

This module is imported whenever `mbedge` starts (for --help), so it imports only what the command
signatures need; the runtime itself (onnxruntime, tokenizers) is imported when a command runs.
Inputs are read by inputs.py and run and written by stream.py.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer

from modernbert_edge.errors import UserError
from modernbert_edge.runtime.batching import DEFAULT_BATCH_ROWS, DEFAULT_BATCH_TOKENS, DEFAULT_MAX_PADDING
from modernbert_edge.runtime.engines import ENGINE_HELP

ON_ERROR = ("skip", "stop")
# Embedding options (also `mbedge batch`'s); None: as the model's sentence-transformers modules say
PoolingOption = Annotated[
    str | None, typer.Option(help="Embeddings: the model's pooling (plain checkpoints: mean), or cls, max, ...")
]
NormalizeOption = Annotated[bool | None, typer.Option(help="Embeddings: L2-normalize (default: as the model says).")]
FILE_HELP = "Folders without manifest.json (optimum, Hub onnx/): the model file, e.g. onnx/model_quantized.onnx."


def _choice(value: str | None, choices: Iterable[str], option: str) -> None:
    if value is not None and value not in choices:
        raise UserError(f"{option} must be one of {', '.join(choices)}, got {value!r}.")


def run_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model folder written by mbedge export or quantize.")],
    texts: Annotated[
        list[str] | None, typer.Argument(help="Texts to run; without them, --input or stdin is read.")
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option("--input", "-i", help="One text per line, or JSONL with a text field ('-' for stdin); UTF-8."),
    ] = None,
    input_format: Annotated[str, typer.Option("--format", help="auto, lines or jsonl.")] = "auto",
    task: Annotated[
        str | None,
        typer.Option(
            help="Check the folder's task ('embed' on any folder with hidden states, 'rerank' on a cross-encoder)."
        ),
    ] = None,
    top_k: Annotated[int | None, typer.Option(help="Predictions per mask (5), labels (all), answers (1).")] = None,
    pooling: PoolingOption = None,
    normalize: NormalizeOption = None,
    prompt_name: Annotated[
        str | None, typer.Option(help="Embeddings: one of the model's prompts (e.g. query).")
    ] = None,
    dim: Annotated[int | None, typer.Option(help="Embeddings: keep the first DIM values, renormalized.")] = None,
    aggregation: Annotated[
        str | None, typer.Option(help="Entities: none, simple (default), first, average or max.")
    ] = None,
    question: Annotated[
        str | None, typer.Option(help="Question answering: the question for every context text.")
    ] = None,
    max_answer_len: Annotated[
        int | None, typer.Option(help="Question answering: longest answer in tokens (15).")
    ] = None,
    batch_tokens: Annotated[int, typer.Option(help="Padded tokens per batch.")] = DEFAULT_BATCH_TOKENS,
    batch_rows: Annotated[int, typer.Option(help="Rows per batch, at most.")] = DEFAULT_BATCH_ROWS,
    max_padding: Annotated[
        float | None, typer.Option(help="Share of a batch that may be padding: 0 (default) equal lengths only, 1 any.")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime threads (default: one per core).")] = None,
    spinning: Annotated[
        str | None, typer.Option(help="Idle ONNX Runtime threads: off (default: sleep), brief or on (spin).")
    ] = None,
    engine: Annotated[str, typer.Option(help=ENGINE_HELP)] = "auto",
    truncation: Annotated[str, typer.Option(help="Inputs too long for the model: truncate or error.")] = "truncate",
    max_length: Annotated[int | None, typer.Option(help="Read at most this many tokens per input.")] = None,
    on_error: Annotated[str, typer.Option(help="A bad input: skip (report it, go on) or stop.")] = "skip",
    progress: Annotated[
        bool | None, typer.Option(help="Progress on stderr (default: on a terminal, for long inputs).")
    ] = None,
    file: Annotated[str | None, typer.Option(help=FILE_HELP)] = None,
) -> None:
    """Run a model folder's task on texts; write one JSON line per input to stdout."""
    from modernbert_edge.runtime.inputs import FORMATS, line_cap, read_inputs
    from modernbert_edge.runtime.loader import load
    from modernbert_edge.runtime.numerics import AGGREGATIONS, POOLINGS
    from modernbert_edge.runtime.session import DEFAULT_SPINNING, SPINNING
    from modernbert_edge.runtime.stream import PROGRESS_ABOVE, Progress, run_items
    from modernbert_edge.runtime.tokenize import CHARS_PER_TOKEN, TRUNCATION

    _choice(input_format, FORMATS, "--format")
    _choice(pooling, POOLINGS, "--pooling")
    _choice(aggregation, AGGREGATIONS, "--aggregation")
    _choice(truncation, TRUNCATION, "--truncation")
    _choice(on_error, ON_ERROR, "--on-error")
    _choice(spinning, SPINNING, "--spinning")
    if texts and input_file is not None:
        raise UserError("pass texts as arguments or with --input, not both.")
    model = load(
        model_dir,
        threads=threads,
        batch_tokens=batch_tokens,
        batch_rows=batch_rows,
        truncation=truncation,
        max_length=max_length,
        max_padding=DEFAULT_MAX_PADDING if max_padding is None else max_padding,
        spinning=DEFAULT_SPINNING if spinning is None else spinning,
        engine=engine,
        file=file,
    )
    spec = model.resolve_task(task)
    given = {
        "top_k": top_k,
        "pooling": pooling,
        "normalize": normalize,
        "prompt_name": prompt_name,
        "dim": dim,
        "aggregation": aggregation,
        "max_answer_len": max_answer_len,
        "question": question,
    }
    applies = set(spec.options) | ({"question"} if spec.pair and spec.expand is None else set())
    stray = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None and k not in applies]
    if stray:
        raise UserError(f"{', '.join(stray)} does not apply to {spec.name}.")
    options = {k: v for k, v in given.items() if v is not None and k != "question"}

    cap = line_cap(CHARS_PER_TOKEN * model.max_length, texts_per_line=2 if spec.pair else 1)
    items, total_known = read_inputs(texts, input_file, input_format, spec, question, cap)
    long_input = total_known is None or total_known > PROGRESS_ABOVE
    bar = Progress(total_known, progress if progress is not None else (sys.stderr.isatty() and long_input))
    try:
        total, failed = run_items(model, items, spec, options, on_error, bar)
    finally:
        bar.close()
    if total == 0:
        raise UserError("no input: the input was empty.")
    if failed:
        raise UserError(f"{failed} of {total} inputs failed (see above); the others were written.")


def info_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model folder written by mbedge export or quantize.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    engine: Annotated[str, typer.Option(help=ENGINE_HELP)] = "auto",
    file: Annotated[str | None, typer.Option(help=FILE_HELP)] = None,
) -> None:
    """Load a model folder (checking it) and print what it holds."""
    from modernbert_edge.cpu import cpu_info
    from modernbert_edge.runtime.loader import load

    info = load(model_dir, engine=engine, file=file).describe()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    cfg = info["config"]
    outputs = ", ".join(f"{name} {shape}" for name, shape in info["outputs"].items())
    tok = info["tokenizer"]
    rows = [
        ("folder", info["folder"]),
        ("task", info["task"]),
        ("precision", info["precision"]),
        ("engine", info["engine"]),
        ("model file", f"{info['model_file']} ({info['model_bytes'] / 1e6:.1f} MB)"),
        ("inputs", ", ".join(info["inputs"])),
        ("outputs", outputs),
        (
            "config",
            ", ".join(
                f"{k.replace('_', ' ')} {cfg[k]}"
                for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "local_attention")
                if k in cfg
            ),
        ),
        ("max length", f"{info['max_length']} tokens"),
        ("labels", ", ".join(info["labels"]) + (f" ({info['problem_type']})" if info["problem_type"] else "")),
        (
            "tokenizer",
            "none: pass token ids to Model.run()"
            if tok is None
            else f"{tok['file']} (vocab {tok['vocab_size']}, mask {tok['mask_token']})",
        ),
        ("validation", _validation_line(info["validation"])),
        ("source", info["source"]),
        ("cpu", cpu_info().line()),
        *(("", line) for line in info["int8"]),
    ]
    for key, value in rows:
        if value:
            typer.echo(f"{key:<11} {value}")


def _validation_line(validation: dict) -> str:
    """'passed (max abs diff 1.8e-07 <= 1e-04)', 'skipped (reason)', or 'none recorded'."""
    if not validation:
        return "none recorded"
    if "max_abs_diff" in validation:
        detail = f"max abs diff {validation['max_abs_diff']:.1e}"
        detail += f" <= {validation['atol']:.0e}" if "atol" in validation else ""
    else:
        detail = validation.get("reason", "")
    return f"{validation.get('status', '?')} ({detail})" if detail else str(validation.get("status", "?"))
