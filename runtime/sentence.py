"""What a sentence-transformers model does after the encoder, in numpy: prompts, pooling, Dense,
Normalize, Matryoshka truncation, similarity; and the cross-encoder's score function.

The manifest's "sentence" section (written by export/sentence.py) lists the modules; a folder
without one embeds as a plain ModernBERT checkpoint did before: mean pooling, L2-normalized.
The formulas follow sentence_transformers.models.Pooling / Dense / Normalize.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modernbert_edge.errors import OptionError, UserError
from modernbert_edge.runtime.errors import ModelFolderError
from modernbert_edge.runtime.numerics import POOLINGS, l2_normalize, pool, sigmoid

SIMILARITIES = ("cosine", "dot", "euclidean", "manhattan")
ACTIVATIONS = {
    "identity": lambda x: x,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "sigmoid": sigmoid,
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0))),
}
# a CrossEncoder's activation (config.json) -> the function that turns its logits into scores
CROSS_ENCODER_FUNCTIONS = {"Sigmoid": "sigmoid", "Identity": "none", "Softmax": "softmax"}


def _erf(x: np.ndarray) -> np.ndarray:
    from math import erf

    return np.vectorize(erf, otypes=[np.float64])(x).astype(x.dtype)


@dataclass(frozen=True)
class Dense:
    weight: np.ndarray  # (out, in)
    bias: np.ndarray | None  # (out,)
    activation: str

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.weight.T + (0.0 if self.bias is None else self.bias)
        return ACTIVATIONS[self.activation](y).astype(np.float32)


@dataclass(frozen=True)
class Embedder:
    """Prompts, pooling and the modules after it; `plain()` is a bare checkpoint's mean + normalize."""

    pooling: tuple[str, ...] = ("mean",)  # several: concatenated
    include_prompt: bool = True
    dense: tuple[Dense, ...] = ()
    normalize: bool = True
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str = "cosine"
    truncate_dim: int | None = None
    do_lower_case: bool = False
    max_seq_length: int | None = None
    dimension: int | None = None  # the vector size after Dense; None: hidden_size
    sentence_transformers: bool = False

    @classmethod
    def from_manifest(cls, folder: Path, section: dict | None) -> Embedder:
        """The manifest's "sentence" section (Dense weights read from their module folders)."""
        if not section:
            return cls()
        from modernbert_edge.safetensors import Weights

        modules = section.get("modules") or []
        pooling = next((m for m in modules if m.get("type") == "Pooling"), {})
        dense = []
        for m in modules:
            if m.get("type") != "Dense":
                continue
            path = folder / m["path"] / "model.safetensors"
            if not path.is_file():
                raise ModelFolderError(f"{folder} has no {m['path']}/model.safetensors (Dense weights).")
            w = Weights([path])
            shape = (m["out_features"], m["in_features"])
            bias = w.get("linear.bias", (m["out_features"],)) if m.get("bias", True) else None
            dense.append(Dense(w.get("linear.weight", shape), bias, m.get("activation", "identity")))
        modes = tuple(pooling.get("modes") or ())
        if not modes or not set(modes) <= set(POOLINGS):
            raise ModelFolderError(f"{folder}'s manifest names pooling {modes}, not from {', '.join(POOLINGS)}.")
        return cls(
            pooling=modes,
            include_prompt=bool(pooling.get("include_prompt", True)),
            dense=tuple(dense),
            normalize=any(m.get("type") == "Normalize" for m in modules),
            prompts=dict(section.get("prompts") or {}),
            default_prompt_name=section.get("default_prompt_name"),
            similarity_fn_name=section.get("similarity_fn_name") or "cosine",
            truncate_dim=section.get("truncate_dim"),
            do_lower_case=bool(section.get("do_lower_case")),
            max_seq_length=section.get("max_seq_length"),
            dimension=section.get("dimension"),
            sentence_transformers=True,
        )

    def width(self, dim: int | None, hidden_size: int) -> int:
        """The size of the vectors `vectors` returns."""
        return dim or self.truncate_dim or self.dimension or hidden_size

    def prompt(self, prompt_name: str | None, prompt: str | None) -> str:
        """The text put before each input: `prompt`, else prompts[prompt_name], else the default prompt."""
        if prompt is not None:
            return prompt
        name = prompt_name if prompt_name is not None else self.default_prompt_name
        if name is None:
            return ""
        if name not in self.prompts:
            known = ", ".join(self.prompts) or "none"
            raise UserError(f"the model has no prompt named {name!r} (its prompts: {known}).")
        return self.prompts[name]

    def texts(self, texts: Sequence[object], prefix: str) -> list[object]:
        """The texts as the model reads them: prompt prepended, lower-cased when the model asks."""
        out = [prefix + t if isinstance(t, str) and prefix else t for t in texts]
        return [t.lower() if isinstance(t, str) and self.do_lower_case else t for t in out]

    def vectors(
        self,
        hidden: np.ndarray,
        mask: np.ndarray,
        prompt_tokens: int = 0,
        pooling: str | None = None,
        normalize: bool | None = None,
        dim: int | None = None,
    ) -> np.ndarray:
        """(B, S, D) hidden states -> (B, dim) vectors. prompt_tokens: the prompt's length in tokens
        ([CLS] included), left out of pooling when the model's Pooling has include_prompt = false."""
        if prompt_tokens and not self.include_prompt:
            mask = mask.copy()
            mask[:, :prompt_tokens] = 0
        modes = (pooling,) if pooling else self.pooling
        x = np.concatenate([pool(hidden, mask, mode) for mode in modes], axis=-1)
        for layer in self.dense:
            x = layer(x)
        dim = dim if dim is not None else self.truncate_dim
        if dim is not None:
            if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= x.shape[-1]:
                raise OptionError(f"dim must be an integer from 1 to {x.shape[-1]}, got {dim!r}.", "dim")
            x = x[:, :dim]
        if normalize if normalize is not None else (self.normalize or dim is not None):  # dim= renormalizes
            x = l2_normalize(x)
        return x.astype(np.float32)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(n, d) and (m, d) vectors -> (n, m) scores with the model's similarity function."""
        a, b = np.atleast_2d(np.asarray(a, np.float32)), np.atleast_2d(np.asarray(b, np.float32))
        if self.similarity_fn_name == "cosine":
            return l2_normalize(a) @ l2_normalize(b).T
        if self.similarity_fn_name == "dot":
            return a @ b.T
        diff = a[:, None, :] - b[None, :, :]
        if self.similarity_fn_name == "euclidean":
            return -np.sqrt((diff**2).sum(-1))
        return -np.abs(diff).sum(-1)  # manhattan


def prompt_tokens(tokenizer: object, prompt: str) -> int:
    """The prompt's length in tokens as sentence-transformers counts it: encoded alone, special tokens
    included, less a trailing special token ([SEP])."""
    if not prompt.strip():
        return 0
    enc = tokenizer.encode([prompt])[0]
    return len(enc.ids) - (1 if enc.special_tokens_mask and enc.special_tokens_mask[-1] else 0)


def cross_encoder_function(activation: str | None, num_labels: int) -> str:
    """How a cross-encoder turns logits into scores: the activation its sentence-transformers config
    names (ModelInfo.activation), else sigmoid for one label (as CrossEncoder.predict does), softmax for more."""
    if activation is None:
        return "sigmoid" if num_labels == 1 else "softmax"
    short = activation.rsplit(".", 1)[-1]
    if short not in CROSS_ENCODER_FUNCTIONS:
        raise UserError(
            f"the cross-encoder's config names activation {activation}; the runtime applies "
            f"{', '.join(CROSS_ENCODER_FUNCTIONS)}."
        )
    return CROSS_ENCODER_FUNCTIONS[short]
