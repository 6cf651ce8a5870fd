"""sentence-transformers metadata: read, checked and copied at export.

A sentence-transformers checkpoint is a transformers folder plus `modules.json`, which lists the
modules that run after the encoder, each in its own folder:

    modules.json                      [{"type": "sentence_transformers.models.Transformer", "path": ""},
                                       {"type": "...Pooling", "path": "1_Pooling"}, ...]
    1_Pooling/config.json             pooling_mode_cls_token / _mean_tokens / ..., include_prompt
    2_Dense/config.json + weights     in_features, out_features, bias, activation_function
    3_Normalize/                      (no settings)
    sentence_bert_config.json         max_seq_length, do_lower_case
    config_sentence_transformers.json prompts, default_prompt_name, similarity_fn_name

`read_sentence` turns them into the manifest's "sentence" section (what runtime/sentence.py runs);
`copy_sentence` copies them into the exported folder unchanged, so sentence-transformers itself
loads the folder with the same modules. A module type not listed in MODULES stops the export.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from modernbert_edge.errors import UserError
from modernbert_edge.safetensors import Weights

MODULES_FILE = "modules.json"
ROOT_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
MODULES = ("Transformer", "Pooling", "Dense", "Normalize")
LEGACY_POOLING = {  # 1_Pooling/config.json of sentence-transformers < 5.5: one boolean per mode
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
POOLING_MODES = tuple(LEGACY_POOLING.values())
ACTIVATIONS = {"Identity": "identity", "Tanh": "tanh", "ReLU": "relu", "Sigmoid": "sigmoid", "GELU": "gelu"}
SIMILARITIES = ("cosine", "dot", "euclidean", "manhattan")
DENSE_WEIGHTS = "model.safetensors"


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} could not be read ({e}).") from None
    if not isinstance(data, (dict, list)):
        raise UserError(f"{path} does not hold a JSON object.")
    return data


def _pooling(folder: Path) -> tuple[dict, int]:
    """The Pooling module's settings (modes are concatenated, in order) and its output width."""
    cfg = _json(folder / "config.json")
    mode = cfg.get("pooling_mode")
    modes = [mode] if isinstance(mode, str) else list(mode or [])
    modes = modes or [name for key, name in LEGACY_POOLING.items() if cfg.get(key)]
    bad = [m for m in modes if m not in POOLING_MODES]
    if not modes or bad:
        raise UserError(
            f"{folder / 'config.json'} names pooling mode {bad or 'none'}; modernbert-edge runs "
            f"{', '.join(POOLING_MODES)}."
        )
    width = int(cfg.get("embedding_dimension") or cfg.get("word_embedding_dimension") or 0)
    return {"modes": modes, "include_prompt": bool(cfg.get("include_prompt", True))}, width * len(modes)


def _dense(folder: Path, width: int) -> dict:
    cfg = _json(folder / "config.json")
    activation = str(cfg.get("activation_function") or "torch.nn.modules.linear.Identity").rsplit(".", 1)[-1]
    if activation not in ACTIVATIONS:
        raise UserError(
            f"{folder / 'config.json'} names activation {activation}; the Dense module runs {', '.join(ACTIVATIONS)}."
        )
    n_in, n_out, bias = int(cfg["in_features"]), int(cfg["out_features"]), bool(cfg.get("bias", True))
    if n_in != width:
        raise UserError(f"{folder} is a Dense layer of {n_in} inputs, but the vectors before it have {width}.")
    weights = folder / DENSE_WEIGHTS
    if not weights.is_file():
        raise UserError(f"{folder} has no {DENSE_WEIGHTS} (Dense weights saved as pytorch_model.bin are not read).")
    w = Weights([weights])  # checks the shapes here, so the runtime can trust them
    w.get("linear.weight", (n_out, n_in))
    if bias:
        w.get("linear.bias", (n_out,))
    return {"in_features": n_in, "out_features": n_out, "bias": bias, "activation": ACTIVATIONS[activation]}


def read_sentence(src: Path, hidden_size: int) -> dict | None:
    """The manifest's "sentence" section for a sentence-transformers checkpoint; None without modules.json."""
    if not (src / MODULES_FILE).is_file():
        return None
    listed = _json(src / MODULES_FILE)
    if not isinstance(listed, list):
        raise UserError(f"{src / MODULES_FILE} does not hold a list of modules.")
    modules, width = [], hidden_size
    for entry in sorted(listed, key=lambda m: m.get("idx", 0)):
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
        path = str(entry.get("path", ""))
        if kind not in MODULES or not str(entry.get("type", "")).startswith("sentence_transformers."):
            raise UserError(
                f"{src / MODULES_FILE} lists module {entry.get('type')!r}, which modernbert-edge cannot run "
                f"(it runs sentence_transformers.models {', '.join(MODULES)})."
            )
        module: dict = {"type": kind, "path": path}
        if kind == "Transformer" and (path or modules):
            raise UserError(f"{src / MODULES_FILE}: the Transformer must be the first module, at path ''.")
        if kind == "Pooling":
            settings, width = _pooling(src / path)
            module.update(settings)
        elif kind == "Dense":
            module.update(_dense(src / path, width))
            width = module["out_features"]
        modules.append(module)
    if not modules or modules[0]["type"] != "Transformer":
        raise UserError(f"{src / MODULES_FILE} does not start with a Transformer module.")
    if not any(m["type"] == "Pooling" for m in modules):
        raise UserError(f"{src / MODULES_FILE} has no Pooling module: token embeddings are not supported.")

    bert = _json(src / ROOT_FILES[1]) if (src / ROOT_FILES[1]).is_file() else {}
    st = _json(src / ROOT_FILES[2]) if (src / ROOT_FILES[2]).is_file() else {}
    prompts = {str(k): str(v) for k, v in (st.get("prompts") or {}).items()}
    default = st.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise UserError(f"{src / ROOT_FILES[2]}'s default_prompt_name {default!r} is not one of its prompts.")
    similarity = st.get("similarity_fn_name") or "cosine"
    if similarity not in SIMILARITIES:
        raise UserError(f"{src / ROOT_FILES[2]} names similarity {similarity!r}; one of {SIMILARITIES} is needed.")
    return {
        "modules": modules,
        "dimension": width,
        "max_seq_length": bert.get("max_seq_length"),
        "do_lower_case": bool(bert.get("do_lower_case", False)),
        "prompts": prompts,
        "default_prompt_name": default,
        "similarity_fn_name": similarity,
        "truncate_dim": st.get("truncate_dim"),
    }


def copy_sentence(src: Path, dst: Path, sentence: dict | None) -> None:
    """Copy modules.json, the two sentence-transformers configs and each module's folder into dst."""
    if sentence is None:
        return
    for name in ROOT_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    for module in sentence["modules"]:
        if module["path"] and (src / module["path"]).is_dir():  # git keeps no empty 3_Normalize folder
            shutil.copytree(src / module["path"], dst / module["path"], dirs_exist_ok=True)
