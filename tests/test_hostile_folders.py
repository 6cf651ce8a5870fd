"""Model folders made elsewhere are untrusted input (issue 24, defect 10): a field of the wrong type
in manifest.json or config.json, a linked config.json, is one sentence (a UserError), never a
TypeError / AttributeError / OverflowError traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modernbert_edge.errors import UserError
from modernbert_edge.runtime import load


@pytest.fixture(scope="module")
def classifier(exported_factory) -> Path:
    return exported_factory("text-classification")


def _copy(folder: Path, tmp_path: Path, name: str = "m") -> Path:
    out = tmp_path / name
    shutil.copytree(folder, out)
    return out


def _edit(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"task": ["fill-mask"]}, "names task"),
        ({"task": 5}, "names task"),
        ({"config": [1, 2]}, "'config' must be an object"),
        ({"outputs": 5}, "'outputs' must be a list"),
        ({"outputs": [1]}, "'outputs' must be a list of names"),
        ({"sentence": "x"}, "'sentence' must be an object"),
        ({"sentence": {"modules": "x"}}, "'sentence' section is not what mbedge export writes"),
    ],
)
def test_a_lying_manifest_is_one_sentence(classifier, tmp_path, changes, words) -> None:
    folder = _copy(classifier, tmp_path)
    _edit(folder / "manifest.json", **changes)
    with pytest.raises(UserError, match=words):
        load(folder)


@pytest.mark.parametrize(
    "changes",
    [{"pad_token_id": 10**20}, {"pad_token_id": 1e20}, {"cls_token_id": -3}, {"sentence_transformers": "x"}],
)
def test_odd_config_values_fall_back_to_defaults(classifier, tmp_path, changes) -> None:
    folder = _copy(classifier, tmp_path)
    _edit(folder / "config.json", **changes)
    model = load(folder)
    assert len(model.classify(["a short text", "a somewhat longer text to pad the other"])) == 2


def test_a_linked_config_is_refused_like_the_other_files(classifier, tmp_path) -> None:
    folder = _copy(classifier, tmp_path)
    outside = tmp_path / "elsewhere.json"
    shutil.move(folder / "config.json", outside)
    (folder / "config.json").symlink_to(outside)
    with pytest.raises(UserError, match="outside the model folder"):
        load(folder)


@pytest.mark.parametrize("config", [[1, 2], {"architectures": 5}, {"architectures": [5], "vocab_size": "x"}])
def test_a_foreign_folder_with_odd_config_types(classifier, tmp_path, config) -> None:
    folder = _copy(classifier, tmp_path)
    (folder / "manifest.json").unlink()
    if isinstance(config, dict):
        base = json.loads((folder / "config.json").read_text())
        config = {**base, **config}
    (folder / "config.json").write_text(json.dumps(config))
    try:
        load(folder)
    except UserError:
        pass  # one sentence is the contract; loading with defaults is fine too


@pytest.mark.parametrize("pattern, refused", [("a*a*a*[^a]", True), (r"\w+|[^\w\s]+", False)])
def test_a_pre_tokenizer_regex_that_backtracks_polynomially_is_refused(classifier, tmp_path, pattern, refused) -> None:
    """tokenizers (Oniguruma) stops exponential backtracking but not polynomial: `a*a*a*[^a]` took
    111 s on 800 characters. The folder is refused when it loads, before any input runs."""
    folder = _copy(classifier, tmp_path)
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    split = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [split, data["pre_tokenizer"]]}
    path.write_text(json.dumps(data))
    if refused:
        with pytest.raises(UserError, match="backtracks polynomially"):
            load(folder)
    else:
        assert len(load(folder).classify(["a b c"])) == 1


def test_a_manifest_that_names_the_wrong_task_is_one_sentence(classifier, tmp_path) -> None:
    """A text-classification graph (logits per input) whose manifest says token-classification used to
    load and answer [] for every text (and, served, warm up into nothing); now it is refused."""
    folder = _copy(classifier, tmp_path)
    _edit(folder / "manifest.json", task="token-classification")
    with pytest.raises(UserError, match="names the wrong task"):
        load(folder)


def test_a_vocabulary_with_a_shared_id_is_one_sentence(classifier, tmp_path) -> None:
    """Two tokens with one id (issue 24, 10c): tokenizers loads the file, then its copy failed with a raw
    "Token … out of vocabulary" traceback; now the load is refused naming the id and both tokens."""
    folder = _copy(classifier, tmp_path)
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[40:42]
    vocab[a] = vocab[b]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=f"gives two tokens the id {vocab[b]} ") as raised:
        load(folder)
    assert repr(a) in str(raised.value) and repr(b) in str(raised.value)


def test_a_file_given_as_the_folder_is_named_a_file(classifier, tmp_path) -> None:
    with pytest.raises(UserError, match="is a file, not a model folder"):
        load(classifier / "config.json")
    with pytest.raises(UserError, match="does not exist"):
        load(tmp_path / "nope")
