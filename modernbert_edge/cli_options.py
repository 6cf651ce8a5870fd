"""The options several `mbedge` commands share, each defined once: one name, one meaning, one default.

Defaults, choices (Enums, so --help lists them) and help texts come from the library
(runtime/options.py), which also checks the values when the command hands them over (`load()`, a
task's options). Pure typer and runtime/options.py: importing this costs `mbedge --help` nothing.

    def run_cmd(model_dir: ModelDir, threads: Threads = None, engine: EngineOpt = DEFAULT_ENGINE, ...)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from modernbert_edge.runtime.options import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_BATCH_TOKENS,
    DEFAULT_ENGINE,
    DEFAULT_MAX_PADDING,
    DEFAULT_SPINNING,
    DEFAULT_TRUNCATION,
    HELP,
    Aggregation,
    Engine,
    Pooling,
    Spinning,
    Truncation,
)

ModelDir = Annotated[
    Path, typer.Argument(metavar="MODEL_DIR", help="Model folder written by mbedge export or quantize.")
]

# ── loading a model (load()'s keyword arguments) ────────────────────────────────────────────────
Threads = Annotated[int | None, typer.Option(help=HELP["threads"], show_default=False)]
EngineOpt = Annotated[Engine, typer.Option(help=HELP["engine"])]
SpinningOpt = Annotated[Spinning, typer.Option(help=HELP["spinning"])]
TruncationOpt = Annotated[Truncation, typer.Option(help=HELP["truncation"])]
MaxLength = Annotated[int | None, typer.Option(help=HELP["max_length"], show_default=False)]
BatchTokens = Annotated[int, typer.Option(help=HELP["batch_tokens"])]
BatchRows = Annotated[int, typer.Option(help=HELP["batch_rows"])]
MaxPadding = Annotated[float, typer.Option(help=HELP["max_padding"])]
File = Annotated[str | None, typer.Option(help=HELP["file"], show_default=False)]

# ── task options (a task's options, tasks.TASKS) ────────────────────────────────────────────────
TopK = Annotated[int | None, typer.Option(help=HELP["top_k"], show_default=False)]
PoolingOpt = Annotated[Pooling | None, typer.Option(help=HELP["pooling"], show_default=False)]
Normalize = Annotated[bool | None, typer.Option(help=HELP["normalize"], show_default=False)]
PromptName = Annotated[str | None, typer.Option(help=HELP["prompt_name"], show_default=False)]
Dim = Annotated[int | None, typer.Option(help=HELP["dim"], show_default=False)]
AggregationOpt = Annotated[Aggregation | None, typer.Option(help=HELP["aggregation"], show_default=False)]

# The defaults, as the Enum members typer shows (a command's `= DEFAULT_...`).
ENGINE_DEFAULT = Engine(DEFAULT_ENGINE)
SPINNING_DEFAULT = Spinning(DEFAULT_SPINNING)
TRUNCATION_DEFAULT = Truncation(DEFAULT_TRUNCATION)
BATCH_TOKENS_DEFAULT = DEFAULT_BATCH_TOKENS
BATCH_ROWS_DEFAULT = DEFAULT_BATCH_ROWS
MAX_PADDING_DEFAULT = 0.0 if DEFAULT_MAX_PADDING is None else DEFAULT_MAX_PADDING


def plain(value: object) -> Any:  # noqa: ANN401 - whatever the option holds
    """An option's value for the library: an Enum member as its string, anything else as it is."""
    return getattr(value, "value", value)


@dataclass(frozen=True)
class LoadOptions:
    """load()'s keyword arguments as a command got them."""

    threads: int | None = None
    engine: Engine = ENGINE_DEFAULT
    spinning: Spinning = SPINNING_DEFAULT
    truncation: Truncation = TRUNCATION_DEFAULT
    max_length: int | None = None
    batch_tokens: int = BATCH_TOKENS_DEFAULT
    batch_rows: int = BATCH_ROWS_DEFAULT
    max_padding: float = MAX_PADDING_DEFAULT
    file: str | None = None

    def kwargs(self) -> dict[str, Any]:
        return {name: plain(getattr(self, name)) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class TaskOptions:
    """A task's options as a command got them (None: the task's default); `given()` the ones set."""

    top_k: int | None = None
    pooling: Pooling | None = None
    normalize: bool | None = None
    prompt_name: str | None = None
    dim: int | None = None
    aggregation: Aggregation | None = None
    max_answer_len: int | None = None

    def given(self) -> dict[str, Any]:
        values = {name: plain(getattr(self, name)) for name in self.__dataclass_fields__}
        return {name: value for name, value in values.items() if value is not None}
