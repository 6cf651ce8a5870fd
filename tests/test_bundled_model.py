"""The small pretrained ModernBERT shipped in modernbert_edge/assets/modernbert-mini loads and is sane."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

ASSET = Path(__file__).resolve().parents[1] / "modernbert_edge" / "assets" / "modernbert-mini"
MAX_BYTES = 30 * 1024 * 1024


@pytest.fixture(scope="module")
def config() -> dict:
    return json.loads((ASSET / "config.json").read_text())


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_file(str(ASSET / "tokenizer.json"))


def test_folder_has_the_checkpoint_files() -> None:
    names = {p.name for p in ASSET.iterdir()}
    expected = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert expected | {"special_tokens_map.json", "training.json", "README.md"} <= names


def test_safetensors_is_small() -> None:
    assert (ASSET / "model.safetensors").stat().st_size <= MAX_BYTES


def test_tokenizer_wraps_in_cls_sep(tok: Tokenizer, config: dict) -> None:
    single = tok.encode("The dict type is a mapping.")
    assert single.tokens[0] == "[CLS]" and single.tokens[-1] == "[SEP]"
    assert (single.ids[0], single.ids[-1]) == (config["cls_token_id"], config["sep_token_id"])
    pair = tok.encode("First text.", "Second text.")
    assert pair.tokens.count("[SEP]") == 2 and pair.type_ids[-1] == 1
    assert tok.token_to_id("[PAD]") == config["pad_token_id"]


def test_mask_token_strips_the_space_before_it(tok: Tokenizer) -> None:
    enc = tok.encode("Return the [MASK] of the list.", add_special_tokens=False)
    at = enc.ids.index(tok.token_to_id("[MASK]"))
    assert enc.tokens[at - 1 : at + 2] == ["Ġthe", " [MASK]", "Ġof"]  # the space went into [MASK]


def test_architecture_is_modernbert(config: dict, tok: Tokenizer) -> None:
    assert config["model_type"] == "modernbert"
    assert config["local_attention"] == 128 and config["global_attn_every_n_layers"] == 3
    assert config["layer_types"][::3] == ["full_attention"] * len(config["layer_types"][::3])
    assert "sliding_attention" in config["layer_types"]
    assert config["vocab_size"] % 64 == 0 and config["vocab_size"] >= tok.get_vocab_size()


def test_loads_with_transformers_and_predicts(tok: Tokenizer) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.ModernBertForMaskedLM.from_pretrained(ASSET).eval()
    ids = tok.encode("The list is sorted in place.").ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits  # (1, T, V)
    assert logits.shape == (1, len(ids), model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_auto_tokenizer_knows_the_special_tokens() -> None:
    transformers = pytest.importorskip("transformers")
    hf_tok = transformers.AutoTokenizer.from_pretrained(ASSET)
    special = (hf_tok.cls_token, hf_tok.sep_token, hf_tok.pad_token, hf_tok.mask_token, hf_tok.unk_token)
    assert special == ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]")
    ids = hf_tok("Hello world")["input_ids"]
    assert ids[0] == hf_tok.cls_token_id and ids[-1] == hf_tok.sep_token_id
