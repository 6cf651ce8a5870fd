"""ModernBERT's config.json, read into one frozen, validated dataclass.

Real checkpoints carry two formats: the original flat one (`global_rope_theta`,
`local_rope_theta`, `global_attn_every_n_layers`, `rope_scaling`) and the newer one of
transformers 5 (`layer_types`, `rope_parameters`). Both are read here, and every value the graph
builder does not support stops the export with a sentence that names the field and the value.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from modernbert_edge.errors import UserError

GLOBAL, LOCAL = "full_attention", "sliding_attention"
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_pytorch_tanh", "gelu_new", "silu", "swish", "relu")
SUPPORTED_ROPE_TYPES = ("default", "linear")
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
# Upper bounds: far above any ModernBERT, low enough that nothing sized by them fails to allocate.
LIMITS = {  # sizes the checkpoint's tensors are checked against
    "vocab_size": 1 << 22,
    "hidden_size": 1 << 16,
    "intermediate_size": 1 << 18,
    "num_hidden_layers": 1 << 10,
    "num_attention_heads": 1 << 10,
}
MAX_POSITIONS = 1 << 17  # rotary caches are (positions, head_dim / 2) per rope
MAX_LOCAL_ATTENTION = 1 << 12  # the local band bias is (C, 3C) floats, C >= local_attention / 2
MAX_LABELS = 1 << 16
FLAT_THETAS = {"global_rope_theta": 160_000.0, "local_rope_theta": 10_000.0}  # the older format's keys


@dataclass(frozen=True)
class ModernBertConfig:
    """The fields of a ModernBERT config.json that the graph depends on (names as in the file)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    hidden_activation: str = "gelu"  # GeGLU's activation
    max_position_embeddings: int = 8192  # rotary caches are built this long
    norm_eps: float = 1e-5
    norm_bias: bool = False  # LayerNorms carry a bias
    attention_bias: bool = False  # Wqkv and attention Wo carry biases
    mlp_bias: bool = False  # Wi and mlp Wo carry biases
    local_attention: int = 128  # total window of local layers: |i - j| <= local_attention // 2
    layer_types: tuple[str, ...] = ()  # one of GLOBAL / LOCAL per layer
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 10_000.0
    global_rope_factor: float = 1.0  # "linear" rope scaling divides positions by this
    local_rope_factor: float = 1.0
    classifier_pooling: str = "cls"  # "cls" or "mean" for sequence classification
    classifier_activation: str = "gelu"  # prediction head's activation
    classifier_bias: bool = False  # prediction head's dense bias
    decoder_bias: bool = True  # fill-mask decoder bias
    tie_word_embeddings: bool = True
    num_labels: int = 2
    id2label: dict[int, str] = field(default_factory=dict)
    problem_type: str | None = None
    architectures: tuple[str, ...] = ()
    pad_token_id: int | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def window(self) -> int:
        """Half window: a local-layer query attends to keys with |i - j| <= window."""
        return self.local_attention // 2

    def rope(self, layer_type: str) -> tuple[float, float]:
        """(theta, linear scaling factor) for a layer type."""
        if layer_type == GLOBAL:
            return self.global_rope_theta, self.global_rope_factor
        return self.local_rope_theta, self.local_rope_factor


def _fail(path: Path, what: str) -> UserError:
    return UserError(f"{path}: {what}")


def _int(path: Path, raw: dict, key: str, default: int | None, low: int, high: int) -> int:
    """raw[key] (or default) as an integer in [low, high]; booleans and floats are refused."""
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(path, f"{key} must be an integer from {low} to {high}, got {value!r}.")
    return value


def _positive(path: Path, value: object, name: str) -> float:
    """A finite number > 0 (rope thetas, factors, norm_eps)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise _fail(path, f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


def _object(path: Path, value: object, name: str) -> dict:
    """A JSON object, or {} for null/absent."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, f"{name} must be an object, got {value!r}.")
    return value


def _rope_entry(path: Path, params: dict | None, name: str, default_theta: float) -> tuple[float, float]:
    """(theta, factor) from one rope_parameters / rope_scaling entry."""
    params = _object(path, params, name)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if not isinstance(rope_type, str) or rope_type not in SUPPORTED_ROPE_TYPES:
        raise _fail(
            path,
            f"{name}.rope_type = {rope_type!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)}).",
        )
    theta = _positive(path, params.get("rope_theta", default_theta), f"{name}.rope_theta")
    factor = _positive(path, params.get("factor", 1.0), f"{name}.factor") if rope_type == "linear" else 1.0
    return theta, factor


def parse_config(raw: dict, path: Path = Path("config.json")) -> ModernBertConfig:
    """Validate a config dict (either format) and return the dataclass."""
    if raw.get("model_type") != "modernbert":
        raise _fail(
            path,
            f"model_type is {raw.get('model_type')!r}, not 'modernbert': this is not a ModernBERT config.",
        )
    hidden, heads, max_positions, norm_eps = _shapes(path, raw)
    layer_types = _layer_types(path, raw, raw["num_hidden_layers"])
    g, l = _rope(path, raw)
    pooling, local_attention = _choices(path, raw)
    id2label, num_labels, problem_type, architectures, pad = _head(path, raw)
    return ModernBertConfig(
        vocab_size=raw["vocab_size"],
        hidden_size=hidden,
        intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"],
        num_attention_heads=heads,
        hidden_activation=raw.get("hidden_activation", "gelu"),
        max_position_embeddings=max_positions,
        norm_eps=norm_eps,
        norm_bias=raw.get("norm_bias", False),
        attention_bias=raw.get("attention_bias", False),
        mlp_bias=raw.get("mlp_bias", False),
        local_attention=local_attention,
        layer_types=layer_types,
        global_rope_theta=g[0],
        global_rope_factor=g[1],
        local_rope_theta=l[0],
        local_rope_factor=l[1],
        classifier_pooling=pooling,
        classifier_activation=raw.get("classifier_activation", "gelu"),
        classifier_bias=raw.get("classifier_bias", False),
        decoder_bias=raw.get("decoder_bias", True),
        tie_word_embeddings=raw.get("tie_word_embeddings", True),
        num_labels=num_labels,
        id2label=id2label,
        problem_type=problem_type,
        architectures=tuple(architectures),
        pad_token_id=pad,
    )


def _shapes(path: Path, raw: dict) -> tuple[int, int, int, float]:
    """(hidden_size, num_attention_heads, max_position_embeddings, norm_eps), with the sizes in LIMITS checked."""
    for key, high in LIMITS.items():
        _int(path, raw, key, None, 1, high)
    hidden, heads = raw["hidden_size"], raw["num_attention_heads"]
    if hidden % heads:
        raise _fail(path, f"hidden_size {hidden} is not divisible by num_attention_heads {heads}.")
    max_positions = _int(path, raw, "max_position_embeddings", 8192, 1, MAX_POSITIONS)
    norm_eps = _positive(path, raw.get("norm_eps", 1e-5), "norm_eps")
    head_dim = raw.get("head_dim")
    if head_dim not in (None, hidden // heads):
        raise _fail(path, f"head_dim = {head_dim} differs from hidden_size / num_attention_heads = {hidden // heads}.")
    if (hidden // heads) % 2:
        raise _fail(path, f"head dimension {hidden // heads} is odd; rotary embeddings need an even one.")
    return hidden, heads, max_positions, norm_eps


def _layer_types(path: Path, raw: dict, layers: int) -> tuple[str, ...]:
    """Each layer's attention: layer_types (newer configs) or every global_attn_every_n_layers-th global."""
    layer_types = raw.get("layer_types")
    every = _int(path, raw, "global_attn_every_n_layers", 3, 1, 1 << 30)  # checked even where layer_types wins
    if layer_types is None:
        layer_types = [LOCAL if i % every else GLOBAL for i in range(layers)]
    if not isinstance(layer_types, list):
        raise _fail(path, f"layer_types must be a list of {GLOBAL!r} / {LOCAL!r}, got {layer_types!r}.")
    layer_types = tuple(layer_types)
    if len(layer_types) != layers:
        raise _fail(path, f"layer_types has {len(layer_types)} entries for {layers} layers.")
    for i, t in enumerate(layer_types):
        if not isinstance(t, str) or t not in (GLOBAL, LOCAL):
            raise _fail(path, f"layer_types[{i}] = {t!r} is not supported (use {GLOBAL!r} or {LOCAL!r}).")
    return layer_types


def _rope(path: Path, raw: dict) -> tuple[tuple[float, float], tuple[float, float]]:
    """(theta, factor) of the global and the local layers' rotary embeddings.

    Newer configs: rope_parameters = {"full_attention": {...}, "sliding_attention": {...}}.
    Older configs: global_rope_theta / local_rope_theta, plus an optional rope_scaling for both."""
    rope_params = _object(path, raw.get("rope_parameters"), "rope_parameters")
    thetas = {key: _positive(path, raw.get(key, default), key) for key, default in FLAT_THETAS.items()}
    scaling = _object(path, raw.get("rope_scaling"), "rope_scaling")
    if GLOBAL in rope_params or LOCAL in rope_params:
        g = _rope_entry(path, rope_params.get(GLOBAL), f"rope_parameters.{GLOBAL}", 160_000.0)
        l = _rope_entry(path, rope_params.get(LOCAL), f"rope_parameters.{LOCAL}", 10_000.0)
    else:
        scaling = scaling or rope_params
        g = _rope_entry(path, {**scaling, "rope_theta": thetas["global_rope_theta"]}, "rope_scaling", 0)
        l = _rope_entry(path, {**scaling, "rope_theta": thetas["local_rope_theta"]}, "rope_scaling", 0)
    return g, l


def _choices(path: Path, raw: dict) -> tuple[str, int]:
    """(classifier_pooling, local_attention), with the activations and the true/false flags checked."""
    for key in ("hidden_activation", "classifier_activation"):
        act = raw.get(key, "gelu")
        if not isinstance(act, str) or act not in SUPPORTED_ACTIVATIONS:
            raise _fail(path, f"{key} = {act!r} is not supported (supported: {', '.join(SUPPORTED_ACTIVATIONS)}).")
    pooling = raw.get("classifier_pooling", "cls")
    if not isinstance(pooling, str) or pooling not in ("cls", "mean"):
        raise _fail(path, f"classifier_pooling = {pooling!r} is not supported (use 'cls' or 'mean').")
    local_attention = _int(path, raw, "local_attention", 128, 2, MAX_LOCAL_ATTENTION)
    for key in ("norm_bias", "attention_bias", "mlp_bias", "classifier_bias", "decoder_bias", "tie_word_embeddings"):
        if key in raw and not isinstance(raw[key], bool):
            raise _fail(path, f"{key} must be true or false, got {raw[key]!r}.")
    return pooling, local_attention


def _head(path: Path, raw: dict) -> tuple[dict[int, str], int, str | None, list[str], int | None]:
    """(id2label, num_labels, problem_type, architectures, pad_token_id)."""
    id2label = _labels(path, raw.get("id2label"))
    num_labels = _int(path, raw, "num_labels", len(id2label) or 2, 1, MAX_LABELS)
    problem_type = raw.get("problem_type")
    if problem_type not in (None, *PROBLEM_TYPES):
        raise _fail(path, f"problem_type = {problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}.")
    architectures = raw.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise _fail(path, f"architectures must be a list of class names, got {architectures!r}.")
    pad = raw.get("pad_token_id")
    if pad is not None:
        pad = _int(path, raw, "pad_token_id", None, 0, raw["vocab_size"] - 1)
    return id2label, num_labels, problem_type, architectures, pad


def _labels(path: Path, raw: object) -> dict[int, str]:
    """id2label as {id: label}: an object mapping the ids 0..n-1 (JSON strings) to label names."""
    labels = _object(path, raw, "id2label")
    try:
        by_id = {int(k): v for k, v in labels.items()}
    except ValueError:
        raise _fail(path, "id2label keys must be label ids (integers).") from None
    if sorted(by_id) != list(range(len(by_id))) or not all(isinstance(v, str) for v in by_id.values()):
        raise _fail(path, f"id2label must map the ids 0..{len(by_id) - 1} to label names, got {raw!r}.")
    return by_id


def read_config(path: Path) -> tuple[ModernBertConfig, dict]:
    """Read and validate config.json; returns the dataclass and the raw dict (copied verbatim on export)."""
    if not path.is_file():
        raise UserError(f"{path} not found: a checkpoint folder needs a config.json.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"{path} could not be read as JSON ({e}).") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} does not hold a JSON object.")
    return parse_config(raw, path), raw
