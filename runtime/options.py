"""Every option of the runtime, once: its default, its choices, its help text and the rule that checks it.

Pure Python (no numpy, onnxruntime or tokenizers), so the CLI builds `--help` from it without loading
the runtime. The library checks each option here, where it takes it (`load()`, a task's options);
the CLI (modernbert_edge/cli_options.py), the server and `mbedge batch` take their defaults and help
texts from here instead of repeating them.
"""

from __future__ import annotations

import os
from enum import Enum, StrEnum

from modernbert_edge.errors import OptionError


class Engine(StrEnum):
    """What runs the graph (runtime/engines.py)."""

    AUTO = "auto"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


class Spinning(StrEnum):
    """What idle ONNX Runtime pool threads do (runtime/session.py SPINNING says why "off" is the default)."""

    OFF = "off"
    BRIEF = "brief"
    ON = "on"


class Truncation(StrEnum):
    """An input longer than the model reads."""

    TRUNCATE = "truncate"
    ERROR = "error"


class Pooling(StrEnum):
    """Embeddings: how token vectors become one vector (sentence-transformers' names)."""

    CLS = "cls"
    MEAN = "mean"
    MAX = "max"
    MEAN_SQRT_LEN_TOKENS = "mean_sqrt_len_tokens"
    WEIGHTEDMEAN = "weightedmean"
    LASTTOKEN = "lasttoken"


class Aggregation(StrEnum):
    """Entities: how tokens become entities (Hugging Face's token-classification pipeline's names)."""

    NONE = "none"
    SIMPLE = "simple"
    FIRST = "first"
    AVERAGE = "average"
    MAX = "max"


class InputFormat(StrEnum):
    """`mbedge run --input`: one text per line, JSONL, or auto (JSONL when the first line is an object)."""

    AUTO = "auto"
    LINES = "lines"
    JSONL = "jsonl"


class OnError(StrEnum):
    """`mbedge run`: a bad input is reported and skipped, or stops the run."""

    SKIP = "skip"
    STOP = "stop"


ENGINES = tuple(e.value for e in Engine)
SPINNING_MODES = tuple(s.value for s in Spinning)
TRUNCATION = tuple(t.value for t in Truncation)
POOLINGS = tuple(p.value for p in Pooling)
AGGREGATIONS = tuple(a.value for a in Aggregation)
FORMATS = tuple(f.value for f in InputFormat)

# ── defaults ─────────────────────────────────────────────────────────────────────────────────────
DEFAULT_THREADS: int | None = None  # one intra-op thread per physical core (ONNX Runtime's 0)
DEFAULT_ENGINE = Engine.AUTO.value
DEFAULT_SPINNING = Spinning.OFF.value
DEFAULT_TRUNCATION = Truncation.TRUNCATE.value
DEFAULT_BATCH_TOKENS = 8192  # padded tokens per batch
DEFAULT_BATCH_ROWS = 64
DEFAULT_MAX_PADDING: float | None = 0.0  # share of a batch's tokens that may be padding; None (or 1): any
DEFAULT_BATCH_SIZE = 256  # embed(): texts tokenized, sorted and run together (also mbedge run's chunk)
DEFAULT_AGGREGATION = Aggregation.SIMPLE.value
MIN_MAX_LENGTH = 3  # a special token either side and one of text
# More intra-op threads than this per logical core only time-slice the same cores (each call gets
# slower); thousands of threads take ONNX Runtime minutes to start. (os.cpu_count() may count a
# container's host, so this is an upper bound, not advice.)
THREADS_PER_CORE = 4

# ── help texts (the CLI's; the library's docstrings say the same) ──────────────────────────────────
HELP = {
    "threads": "ONNX Runtime intra-op threads per model: 0 or unset, one per physical core; at most 4 per core.",
    "engine": "auto, onnxruntime, or openvino (folders exported with --ops portable).",
    "spinning": "Idle ONNX Runtime threads: off (sleep), brief (spin 1 ms) or on (spin, busy cores between calls).",
    "truncation": "Inputs longer than the model reads: truncate (with a warning) or error.",
    "max_length": "Read at most this many tokens per input (default and upper bound: the model's).",
    "batch_tokens": "Padded tokens per batch.",
    "batch_rows": "Rows per batch, at most.",
    "max_padding": "Share of a batch's tokens that may be padding: 0 equal lengths only (flash attention), 1 any.",
    "file": "Folders without manifest.json (optimum, Hub onnx/): the model file, e.g. onnx/model_quantized.onnx.",
    "top_k": "Results per input: predictions per mask (fill-mask, 5), labels (classification, all), "
    "answers (question answering, 1), documents (rerank, all).",
    "pooling": "Embeddings: the model's pooling (plain checkpoints: mean), or another.",
    "normalize": "Embeddings: L2-normalize (default: as the model says).",
    "prompt_name": "Embeddings: one of the model's prompts (e.g. query).",
    "dim": "Embeddings: keep the first DIM values, renormalized (Matryoshka).",
    "aggregation": "Entities: none (one per token), simple (group adjacent tokens), first, average or max.",
}


# ── the rules ────────────────────────────────────────────────────────────────────────────────────


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_threads(threads: object) -> None:
    """A UserError unless threads is None or an integer from 0 (one per physical core) to
    THREADS_PER_CORE per logical core."""
    most = THREADS_PER_CORE * (os.cpu_count() or 1)
    if threads is not None and not (_is_int(threads) and 0 <= threads <= most):
        raise OptionError(
            f"threads must be an integer from 0 (one per physical core) to {most} ({THREADS_PER_CORE} per core "
            f"of this machine's {os.cpu_count() or 1}), got {threads!r}.",
            "threads",
        )


def choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """value (a string or one of the Enums above) as its string; a UserError naming the choices otherwise."""
    text = value.value if isinstance(value, Enum) else value
    if text not in choices:
        raise OptionError(f"{name} must be one of {', '.join(choices)}, got {value!r}.", name)
    return text


def spinning_mode(spinning: object) -> str:
    """One of SPINNING_MODES for a `spinning` option (True / False mean "on" / "off")."""
    if isinstance(spinning, bool):
        return Spinning.ON.value if spinning else Spinning.OFF.value
    return choice("spinning", spinning, SPINNING_MODES)


def positive(name: str, value: object) -> None:
    """A UserError unless value is None or a positive integer."""
    if value is not None and not (_is_int(value) and value >= 1):
        raise OptionError(f"{name} must be a positive integer, got {value!r}.", name)


def check_max_padding(max_padding: object) -> None:
    if max_padding is not None and not (
        isinstance(max_padding, (int, float)) and not isinstance(max_padding, bool) and 0.0 <= max_padding <= 1.0
    ):
        raise OptionError(
            f"max_padding must be a fraction from 0 to 1 (1: any padding), got {max_padding!r}.", "max_padding"
        )


def check_max_length(max_length: object) -> None:
    if max_length is not None and not (_is_int(max_length) and max_length >= MIN_MAX_LENGTH):
        raise OptionError(f"max_length must be at least {MIN_MAX_LENGTH} tokens, got {max_length!r}.", "max_length")


def check_task_option(key: str, value: object) -> object:
    """A task option's value (an Enum as its string), checked; None keeps the task's default."""
    if key in ("top_k", "max_answer_len", "dim"):
        positive(key, value)
    if key in ("normalize", "align_to_words") and not (value is None or isinstance(value, bool)):
        raise OptionError(f"{key} must be True or False, got {value!r}.", key)
    if key == "ignore_labels" and not (
        isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value)
    ):
        raise OptionError(f"ignore_labels must be a list of labels, got {value!r}.", "ignore_labels")
    choices = {"pooling": POOLINGS, "aggregation": AGGREGATIONS}.get(key)
    if choices is not None and value is not None:  # None: as the model says
        return choice(key, value, choices)
    return value
