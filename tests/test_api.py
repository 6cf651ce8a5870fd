"""The Python API's conventions: load()'s real keyword arguments, the top-level exports, embed's shapes,
batch_size, progress and the streaming embed_iter, similarity on texts (issue 22)."""

from __future__ import annotations

import inspect
import itertools
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import modernbert_edge as mbe
from modernbert_edge.runtime.options import DEFAULT_BATCH_SIZE

TEXTS = ["alice works at acme corp in berlin", "the fox", "bob", "python code function return value", "the fox"]


@pytest.fixture(scope="module")
def embedder(exported_factory):
    return mbe.load(Path(exported_factory("feature-extraction")), threads=1)


def test_load_names_its_options_and_takes_paths(exported_factory) -> None:
    params = inspect.signature(mbe.load).parameters
    assert {
        "batch_tokens",
        "batch_rows",
        "truncation",
        "max_length",
        "max_padding",
        "spinning",
        "engine",
        "file",
    } <= set(params)
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in params.values())  # a typo is a TypeError
    with pytest.raises(TypeError, match="batch_token"):
        mbe.load(exported_factory("feature-extraction"), batch_token=1)
    folder = exported_factory("feature-extraction")
    model = mbe.load(folder, engine=mbe.Engine.ONNXRUNTIME, spinning=mbe.Spinning.BRIEF, truncation="error")
    assert isinstance(model, mbe.Model) and model.truncation == "error" and model.engine == "onnxruntime"
    with pytest.raises(mbe.UserError, match="engine must be one of auto, onnxruntime, openvino, got 'gpu'"):
        mbe.load(folder, engine="gpu")
    with pytest.raises(mbe.UserError, match="spinning must be one of off, brief, on"):
        mbe.load(folder, spinning="sometimes")
    with pytest.raises(mbe.UserError, match="max_padding must be a fraction from 0 to 1"):
        mbe.load(folder, max_padding=2)


def test_top_level_exports_are_lazy() -> None:
    code = (
        "import sys, modernbert_edge as m\n"
        "heavy = [k for k in ('numpy', 'onnxruntime', 'tokenizers') if k in sys.modules]\n"
        "assert heavy == [], heavy\n"
        "from modernbert_edge import Model, InputError, ModelFolderError, FillMaskPrediction, LabelScore, Engine\n"
        "assert issubclass(InputError, m.UserError) and issubclass(ModelFolderError, m.UserError)\n"
        "assert 'score' in LabelScore.__annotations__ and Model.__name__ == 'Model'\n"
        "assert set(m.__all__) <= set(dir(m))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_embed_shapes_follow_sentence_transformers(embedder) -> None:
    many = embedder.embed(TEXTS)
    assert many.shape == (len(TEXTS), 64) and embedder.embed(TEXTS[0]).shape == (64,)
    np.testing.assert_allclose(embedder.embed(TEXTS[0]), many[0], atol=1e-6)
    np.testing.assert_allclose(embedder.embed(iter(TEXTS)), many, atol=1e-6)  # any iterable
    np.testing.assert_allclose(embedder.embed(TEXTS, batch_size=2), many, atol=1e-6)
    with pytest.raises(mbe.UserError, match="batch_size must be a positive integer"):
        embedder.embed(TEXTS, batch_size=0)


def test_embed_batch_size_keeps_the_index_of_a_bad_input(embedder) -> None:
    with pytest.raises(mbe.EmptyInputError, match="input 3 is empty"):
        embedder.embed(["a", "b", "c", ""], batch_size=2)
    strict = mbe.load(embedder.info.folder, max_length=8, truncation="truncate")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        strict.embed(["a", "b", "c", "one two three four five six seven eight nine ten"], batch_size=2)
    assert [w.message.index for w in caught if isinstance(w.message, mbe.TruncationWarning)] == [3]


def test_embed_iter_reads_lazily(embedder) -> None:
    read = []

    def corpus():
        for i in range(10):
            read.append(i)
            yield TEXTS[i % len(TEXTS)]
        raise AssertionError("read past the end")  # never: islice stops at the end of the chunk

    stream = embedder.embed_iter(corpus(), batch_size=3)
    assert read == []  # nothing read before the first vector is asked for
    first = next(stream)
    assert read == [0, 1, 2] and first.shape == (64,)  # one chunk of batch_size texts, no more
    rest = list(itertools.islice(stream, 3))
    assert len(rest) == 3 and read == [0, 1, 2, 3, 4, 5]
    np.testing.assert_allclose(np.stack([first, *rest]), embedder.embed([TEXTS[i % 5] for i in range(4)]), atol=1e-6)
    with pytest.raises(mbe.UserError, match="pooling must be one of"):
        embedder.embed_iter(corpus(), pooling="median")  # checked before anything is read
    assert DEFAULT_BATCH_SIZE >= 1


def test_show_progress_writes_to_stderr(embedder, capsys) -> None:
    embedder.embed(TEXTS, show_progress=True)
    err = capsys.readouterr().err
    assert f"{len(TEXTS)}/{len(TEXTS)} inputs" in err and err.endswith("\n")
    embedder.embed(TEXTS)
    assert capsys.readouterr().err == ""


def test_similarity_takes_texts_and_vectors(embedder) -> None:
    vectors = embedder.embed(TEXTS)
    by_text = embedder.similarity(TEXTS[:2], TEXTS)
    assert by_text.shape == (2, len(TEXTS))
    np.testing.assert_allclose(by_text, embedder.similarity(vectors[:2], vectors), atol=1e-5)
    np.testing.assert_allclose(embedder.similarity("bob", vectors[2]), [[1.0]], atol=1e-5)
    with pytest.raises(mbe.UserError, match="vectors of 64 and 3 values"):
        embedder.similarity(vectors, np.ones((2, 3)))
    with pytest.raises(mbe.UserError, match="similarity\\(\\)'s b must be a text"):
        embedder.similarity("bob", {"x": 1})
