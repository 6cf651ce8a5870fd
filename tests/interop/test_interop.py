"""Interop, tested with the real libraries: sentence-transformers (PyTorch and its ONNX backend) and
optimum's ORTModelFor* on exported folders, and optimum's own exports through this runtime.

Runs in .venv-interop (transformers < 4.58, which optimum needs); tests/test_interop.py launches it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer, models
from typer.testing import CliRunner

import modernbert_edge as mbe
from modernbert_edge.cli import app
from modernbert_edge.export.exporter import export
from modernbert_edge.quantize.quantizer import quantize

TEXTS = ["alice works at acme corp in berlin", "the quick brown fox", "what is the answer to the question"]
DOCS = ["alice works at acme", "the lazy dog sleeps", "paris france music", "a question about python code"]
PROMPTS = {"query": "search_query: ", "document": "search_document: "}
quiet = {"log": lambda _m: None, "validate": False}  # each test compares with PyTorch itself


def _sentence_model(ckpt: Path, out: Path, kind: str) -> Path:
    word = models.Transformer(str(ckpt))
    d = word.get_embedding_dimension() if hasattr(word, "get_embedding_dimension") else 64
    if kind == "cls":
        modules, extra = [word, models.Pooling(d, pooling_mode="cls"), models.Normalize()], {}
    elif kind == "prompts-dense":
        dense = models.Dense(d, 32, activation_function=torch.nn.Tanh())
        modules = [word, models.Pooling(d, pooling_mode="mean", include_prompt=False), dense, models.Normalize()]
        extra = {"prompts": PROMPTS, "default_prompt_name": "document"}
    else:  # matryoshka: mean pooling, trained (in real life) so that prefixes of the vector work alone
        modules, extra = [word, models.Pooling(d, pooling_mode="mean"), models.Normalize()], {}
    SentenceTransformer(modules=modules, device="cpu", **extra).save(str(out))
    return out


@pytest.fixture(scope="session")
def sentence_models(checkpoint_factory, tmp_path_factory):
    """kind -> (sentence-transformers folder, exported fp32 folder, int8 folder)."""
    made = {}
    for kind in ("cls", "prompts-dense", "matryoshka"):
        root = tmp_path_factory.mktemp(kind)
        st = _sentence_model(checkpoint_factory("feature-extraction"), root / "st", kind)
        export(str(st), root / "fp32", **quiet)
        quantize(root / "fp32", root / "int8", force=True, log=quiet["log"])  # the tests judge the vectors
        made[kind] = (st, root / "fp32", root / "int8")
    return made


CASES = [("cls", {}), ("prompts-dense", {"prompt_name": "query"}), ("prompts-dense", {}), ("matryoshka", {"dim": 16})]


@pytest.mark.parametrize(("kind", "kwargs"), CASES)
def test_embed_matches_sentence_transformers(sentence_models, kind, kwargs) -> None:
    st_dir, fp32, int8 = sentence_models[kind]
    dim = kwargs.get("dim")
    st_kwargs = {k: v for k, v in kwargs.items() if k != "dim"}
    reference = SentenceTransformer(str(st_dir), device="cpu", truncate_dim=dim)
    want = reference.encode(TEXTS, normalize_embeddings=dim is not None, **st_kwargs)
    got = mbe.load(fp32).embed(TEXTS, **kwargs)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)
    quantized = mbe.load(int8).embed(TEXTS, **kwargs)
    cosines = (quantized * want).sum(-1) / np.linalg.norm(quantized, axis=-1) / np.linalg.norm(want, axis=-1)
    assert cosines.min() >= 0.999, cosines
    for folder in (fp32, int8):  # sentence-transformers loads our folders with the same modules
        onnx_model = SentenceTransformer(
            str(folder), backend="onnx", device="cpu", truncate_dim=dim, model_kwargs={"file_name": "model.onnx"}
        )
        vectors = onnx_model.encode(TEXTS, normalize_embeddings=dim is not None, **st_kwargs)
        one_batch = mbe.load(folder, max_padding=1.0)  # as sentence-transformers batches (int8 scales are per batch)
        np.testing.assert_allclose(vectors, one_batch.embed(TEXTS, **kwargs), atol=1e-5)


def test_similarity_is_the_models(sentence_models) -> None:
    st_dir, fp32, _ = sentence_models["cls"]
    model = mbe.load(fp32)
    a, b = model.embed(TEXTS[:2]), model.embed(DOCS)
    want = SentenceTransformer(str(st_dir), device="cpu").similarity(a, b).numpy()
    np.testing.assert_allclose(model.similarity(a, b), want, atol=1e-6)


def test_rerank_matches_cross_encoder(checkpoint_factory, tmp_path) -> None:
    one_label = tmp_path / "ce"
    CrossEncoder(str(checkpoint_factory("text-classification", num_labels=1)), device="cpu").save(str(one_label))
    export(str(one_label), tmp_path / "out", **quiet)
    query = "who works at acme"
    want = CrossEncoder(str(one_label), device="cpu").predict([(query, d) for d in DOCS])
    ranking = mbe.load(tmp_path / "out").rerank(query, DOCS)
    assert [r["index"] for r in ranking] == list(np.argsort(-want, kind="stable"))
    np.testing.assert_allclose([r["score"] for r in ranking], np.sort(want)[::-1], atol=1e-5)
    assert len(mbe.load(tmp_path / "out").rerank(query, DOCS, top_k=2)) == 2


def _optimum_export(ckpt: Path, out: Path, task: str) -> Path:
    from optimum.exporters.onnx import main_export

    main_export(str(ckpt), output=str(out), task=task, no_post_process=True, do_validation=False)
    return out


def test_optimum_export_runs_here(checkpoint_factory, tmp_path) -> None:
    """A folder optimum exported: load() and `mbedge run` match PyTorch; `mbedge quantize` and compare take it."""
    from transformers import AutoModel, AutoTokenizer

    ckpt = checkpoint_factory("feature-extraction")
    folder = _optimum_export(ckpt, tmp_path / "optimum", "feature-extraction")
    assert not (folder / "manifest.json").exists()
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(str(ckpt)).eval()(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    model = mbe.load(folder)
    assert model.task == "feature-extraction"
    np.testing.assert_allclose(model.embed(TEXTS), want, atol=1e-5)
    run = CliRunner().invoke(app, ["run", str(folder), *TEXTS])
    assert run.exit_code == 0, run.output
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    np.testing.assert_allclose([line["embedding"] for line in lines], want, atol=1e-5)
    quantized = CliRunner().invoke(app, ["quantize", str(folder), str(tmp_path / "int8")])  # dynamic int8, gated
    assert quantized.exit_code == 0 and "token cosine, worst" in quantized.output, quantized.output
    got = mbe.load(tmp_path / "int8").embed(TEXTS)
    assert ((got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)).min() >= 0.99
    compared = CliRunner().invoke(app, ["compare", str(folder), str(tmp_path / "int8")])
    assert compared.exit_code == 0 and "token cosine, worst" in compared.output, compared.output


ORT_CLASSES = {
    "feature-extraction": "ORTModelForFeatureExtraction",
    "fill-mask": "ORTModelForMaskedLM",
    "text-classification": "ORTModelForSequenceClassification",
    "token-classification": "ORTModelForTokenClassification",
    "question-answering": "ORTModelForQuestionAnswering",
}


@pytest.mark.parametrize("task", list(ORT_CLASSES))
def test_optimum_loads_our_folders(checkpoint_factory, exported_factory, task) -> None:
    import optimum.onnxruntime as ort_models
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer
    from transformers import AutoModelForQuestionAnswering as QA
    from transformers import AutoModelForSequenceClassification as SC
    from transformers import AutoModelForTokenClassification as TC

    ckpt, folder = checkpoint_factory(task), exported_factory(task)
    ours = getattr(ort_models, ORT_CLASSES[task]).from_pretrained(str(folder))
    torch_cls = {"feature-extraction": AutoModel, "fill-mask": AutoModelForMaskedLM}.get(task) or {
        "text-classification": SC,
        "token-classification": TC,
        "question-answering": QA,
    }[task]
    reference = torch_cls.from_pretrained(str(ckpt)).eval()
    batch = AutoTokenizer.from_pretrained(str(folder))(TEXTS, padding=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask"}  # tokenizer_config.json's model_input_names
    with torch.no_grad():
        want, got = reference(**batch), ours(**batch)
    real = batch["attention_mask"].bool()
    for name in ("last_hidden_state", "logits", "start_logits", "end_logits"):
        if name in want and name in got:
            w, g = want[name], torch.as_tensor(got[name])
            if w.dim() >= 2 and w.shape[:2] == real.shape:  # per token: real tokens only
                w, g = w[real], g[real]
            np.testing.assert_allclose(g.numpy(), w.numpy(), atol=1e-4)


QA_PAIRS = [
    ("where does alice work?", "alice works at acme corp in berlin since march of last year."),
    ("who lives in london?", "bob lives in london. his sister lives in paris, and their parents in new york city."),
]


@pytest.mark.parametrize("align_to_words", [True, False])
@pytest.mark.parametrize("top_k", [1, 3, 10])
def test_answer_matches_the_question_answering_pipeline(checkpoint_factory, exported_factory, top_k, align_to_words):
    """answer() against transformers' pipeline (4.57 here; 5.x has no question-answering pipeline) on the
    PyTorch model: the same answers in the same order, with the same offsets, spans of one text merged."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, pipeline

    ckpt = checkpoint_factory("question-answering")
    reference = pipeline(
        "question-answering",
        model=AutoModelForQuestionAnswering.from_pretrained(str(ckpt)).eval(),
        tokenizer=AutoTokenizer.from_pretrained(str(ckpt)),
        device="cpu",
    )
    model = mbe.load(exported_factory("question-answering"))
    for question, context in QA_PAIRS:
        want = reference(question=question, context=context, top_k=top_k, align_to_words=align_to_words)
        got = model.answer(question, context, top_k=top_k, align_to_words=align_to_words)
        want, got = ([want], [got]) if top_k == 1 else (want, got)
        assert len({a["answer"].lower() for a in got}) == len(got) == top_k  # distinct, and as many as asked
        assert [(a["answer"], a["start"], a["end"]) for a in got] == [(a["answer"], a["start"], a["end"]) for a in want]
        np.testing.assert_allclose([a["score"] for a in got], [a["score"] for a in want], rtol=1e-4)
