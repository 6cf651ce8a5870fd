"""The CPU runtime against PyTorch/transformers on tiny exported models, plus batching, padding,
truncation, bad inputs, damaged folders and threads."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import modernbert_edge
from modernbert_edge.runtime import (
    EmptyInputError,
    InputError,
    InputTooLongError,
    MissingMaskError,
    MissingTokenizerError,
    ModelFolderError,
    TaskMismatchError,
    TruncationWarning,
    load,
)
from modernbert_edge.runtime.batching import pad, plan_batches
from modernbert_edge.runtime.tasks import FOLDER_TASKS as TASKS

# Lengths on both sides of the tiny models' 16-token local window.
TEXTS = [
    "alice works at acme corp in berlin",
    "the fox",
    "the quick brown fox jumps over a lazy dog while the model reads long documents about paris france "
    "and london since march of last year",
    "bob",
    "python code function return value error data table query answer question context",
]
MASKED = [
    "the quick brown [MASK] jumps over a lazy dog",
    "alice works at [MASK] corp",
    "the model reads long documents about paris [MASK] and london music science python code function "
    "return value error data table query [MASK] question",
]
QUESTIONS = [
    ("who works at acme?", "alice works at acme corp in berlin and new york city since march of last year"),
    ("where?", "bob"),
    ("what does the model read?", "the model reads long documents about paris france and london music"),
]
ATOL = 1e-5


@pytest.fixture(scope="module")
def models(exported_factory):
    """{task: (exported folder, loaded Model)} for every task."""
    return {task: (exported_factory(task), load(exported_factory(task))) for task in TASKS}


def _checkpoint(checkpoint_factory, task: str, **kwargs) -> str:
    return str(checkpoint_factory(task, **kwargs))


def test_every_contract_task_has_a_runtime_row_and_an_export_head() -> None:
    from modernbert_edge.contract import HEADS
    from modernbert_edge.export.tasks import TASKS as EXPORT_TASKS

    assert set(TASKS) == set(EXPORT_TASKS) == set(HEADS)
    assert {t.name: t.outputs for t in TASKS.values()} == {name: h.output_names for name, h in HEADS.items()}


def test_load_is_forwarded_and_describes_the_folder(models) -> None:
    folder, _ = models["text-classification"]
    model = modernbert_edge.load(str(folder), threads=1)
    info = model.describe()
    assert info["task"] == "text-classification" and info["labels"] == ["NEG", "NEU", "POS"]
    assert info["inputs"] == ["input_ids", "attention_mask"] and info["tokenizer"]["mask_token"] == "[MASK]"
    json.dumps(info)  # plain data


# ── every task against PyTorch / transformers ───────────────────────────────────────────────────


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_embed_matches_pytorch(models, checkpoint_factory, pooling) -> None:
    import torch
    import transformers

    ckpt = _checkpoint(checkpoint_factory, "feature-extraction")
    tok = transformers.AutoTokenizer.from_pretrained(ckpt)
    ref_model = transformers.AutoModel.from_pretrained(ckpt).eval()
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = ref_model(**batch).last_hidden_state.numpy()
    mask = batch["attention_mask"].numpy()[..., None]
    ref = hidden[:, 0] if pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1)

    model = models["feature-extraction"][1]
    raw = model.embed(TEXTS, pooling=pooling, normalize=False)
    assert raw.dtype == np.float32 and raw.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(raw, ref, atol=ATOL)
    unit = model.embed(TEXTS, pooling=pooling)
    np.testing.assert_allclose(unit, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=ATOL)
    # sentence-transformers' shapes: one text -> (dim,), a list -> (n, dim), even of one text
    assert model.embed("bob").shape == (64,) and model.embed(["bob"]).shape == (1, 64)
    assert model.embed([]).shape == (0, 64)
    np.testing.assert_allclose(model.embed("bob", pooling=pooling), unit[3], atol=ATOL)


def test_fill_mask_matches_the_pipeline(models, checkpoint_factory) -> None:
    import transformers

    pipe = transformers.pipeline("fill-mask", model=_checkpoint(checkpoint_factory, "fill-mask"))
    model = models["fill-mask"][1]
    ours = model.fill_mask(MASKED, top_k=5)
    for text, result in zip(MASKED, ours, strict=True):
        ref = pipe(text, top_k=5)
        # the pipeline's nesting: one mask, a list of predictions; several, a list per mask; so is ours
        assert isinstance(result[0], dict) == isinstance(ref[0], dict) == (text.count("[MASK]") == 1)
        assert model.fill_mask(text, top_k=5) == result  # a text alone, as in a list
        result, ref = ([result], [ref]) if isinstance(ref[0], dict) else (result, ref)
        assert len(result) == len(ref) == text.count("[MASK]")
        for got, want in zip(result, ref, strict=True):
            assert [p["token"] for p in got] == [p["token"] for p in want]
            if len(result) == 1:  # several masks: no `sequence` (it would grow as masks × length)
                assert [p["sequence"] for p in got] == [p["sequence"] for p in want]
            else:
                assert all("sequence" not in p for p in got)
            assert [p["token_str"] for p in got] == [p["token_str"] for p in want]
            np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in want], atol=ATOL)


@pytest.mark.parametrize("problem_type", [None, "multi_label_classification"])
def test_classify_matches_the_pipeline(models, exported_factory, checkpoint_factory, problem_type) -> None:
    import transformers

    kwargs = {"problem_type": problem_type} if problem_type else {}
    model = load(exported_factory("text-classification", **kwargs)) if kwargs else models["text-classification"][1]
    pipe = transformers.pipeline(
        "text-classification", model=_checkpoint(checkpoint_factory, "text-classification", **kwargs), top_k=None
    )
    ours = model.classify(TEXTS, top_k=None)
    for got, want in zip(ours, pipe(TEXTS), strict=True):
        assert [r["label"] for r in got] == [r["label"] for r in want]
        np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], atol=ATOL)
    if problem_type:  # sigmoid scores need not sum to 1
        assert abs(sum(r["score"] for r in ours[0]) - 1) > 1e-3
    assert len(model.classify(TEXTS[0], top_k=1)) == 1
    # The pipeline's defaults and nesting: the top label by default (one text: a list of it), all with
    # top_k=None, the best k with top_k=k.
    default = transformers.pipeline(
        "text-classification", model=_checkpoint(checkpoint_factory, "text-classification", **kwargs)
    )
    for call in (
        lambda f, **k: f(TEXTS[0], **k),
        lambda f, **k: f(TEXTS, **k),
    ):
        for options in ({}, {"top_k": None}, {"top_k": 2}):
            got, want = call(model.classify, **options), call(default, **options)
            assert _labels(got) == _labels(want), options
    assert isinstance(model.classify(TEXTS)[0], dict) and len(model.classify(TEXTS[0])) == 1


def _labels(result: object) -> object:
    """The labels of a classify / pipeline result, nesting kept (scores are compared above)."""
    if isinstance(result, dict):
        return result["label"]
    return [_labels(r) for r in result]


@pytest.fixture(scope="module")
def ner_pipeline(checkpoint_factory):
    import transformers

    return transformers.pipeline("token-classification", model=_checkpoint(checkpoint_factory, "token-classification"))


@pytest.mark.parametrize("aggregation", ["none", "simple", "first", "average", "max"])
def test_tag_matches_the_pipeline(models, ner_pipeline, aggregation) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Tokenizer does not support real words" (byte-level BPE)
        refs = ner_pipeline(TEXTS, aggregation_strategy=aggregation)
    ours = models["token-classification"][1].tag(TEXTS, aggregation=aggregation)
    key = "entity" if aggregation == "none" else "entity_group"
    assert any(ours), "the tiny model should find some entities, or this test compares nothing"
    for text, got, want in zip(TEXTS, ours, refs, strict=True):
        assert [(e[key], e["start"], e["end"]) for e in got] == [(e[key], e["start"], e["end"]) for e in want]
        np.testing.assert_allclose([e["score"] for e in got], [float(e["score"]) for e in want], atol=ATOL)
        assert all(e["word"] == text[e["start"] : e["end"]] for e in got)


def test_answer_matches_pytorch(models, checkpoint_factory) -> None:
    """Spans from PyTorch logits through transformers' own span search (select_starts_ends)."""
    import torch
    import transformers
    from transformers.pipelines.document_question_answering import select_starts_ends

    ckpt = _checkpoint(checkpoint_factory, "question-answering")
    tok = transformers.AutoTokenizer.from_pretrained(ckpt)
    ref_model = transformers.AutoModelForQuestionAnswering.from_pretrained(ckpt).eval()
    model = models["question-answering"][1]
    for question, context in QUESTIONS:
        enc = tok(question, context, return_tensors="pt")
        with torch.no_grad():
            out = ref_model(**enc)
        seq = enc.sequence_ids(0)
        p_mask = np.array([s != 1 for s in seq], dtype=int)
        p_mask[0] = 0  # [CLS] joins the softmax, as the question-answering pipeline did
        starts, ends, scores, _ = select_starts_ends(
            out.start_logits.numpy(), out.end_logits.numpy(), p_mask, enc["attention_mask"].numpy(), top_k=3
        )
        chars = lambda token: enc.word_to_chars(enc.token_to_word(token), sequence_index=1)  # noqa: E731, B023
        want = [
            (chars(s).start, chars(e).end, float(score))
            for s, e, score in zip(starts, ends, scores, strict=True)
            if score > 0  # transformers may fill top_k with zero-score [CLS] spans; the runtime does not
        ]
        got = model.answer(question, context, top_k=3)
        assert [(a["start"], a["end"]) for a in got] == [(s, e) for s, e, _ in want]
        np.testing.assert_allclose([a["score"] for a in got], [sc for _, _, sc in want], atol=ATOL)
        assert all(a["answer"] == context[a["start"] : a["end"]] for a in got)
        best = model.answer(question, context)
        assert isinstance(best, dict) and best["start"] == want[0][0]
    batch = model.answer("who works at acme?", [c for _, c in QUESTIONS])
    assert [b["start"] for b in batch] == [model.answer("who works at acme?", c)["start"] for _, c in QUESTIONS]


# ── batching and padding ────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("task", list(TASKS))
def test_padding_never_changes_a_result(models, task) -> None:
    """Each text alone, and right-padded inside one batch of mixed lengths, through every graph."""
    model = models[task][1]
    texts = [f"{q} {c}" for q, c in QUESTIONS] + TEXTS
    rows = [e.ids for e in model.tokenizer.encode(texts)]
    ids, mask = pad(rows, model.info.pad_token_id)
    batched = model.run(ids, mask)
    per_token = task != "text-classification"  # its logits are (B, labels), one row per text
    for b, row in enumerate(rows):
        alone = model.run(np.array([row]), np.ones((1, len(row)), np.int64))
        for name, value in alone.items():
            got = batched[name][b, : len(row)] if per_token else batched[name][b]
            np.testing.assert_allclose(got, value[0], atol=ATOL, err_msg=name)
            if per_token:  # padded positions are zero
                assert not batched[name][b, len(row) :].any()


def test_batches_are_sorted_within_the_token_budget() -> None:
    lengths = [5, 300, 17, 17, 1200, 64, 1, 900]
    batches = plan_batches(lengths, max_tokens=1024, max_rows=3, max_padding=None)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)
    for b in batches:
        assert len(b) <= 3
        assert len(b) * max(lengths[i] for i in b) <= 1024 or len(b) == 1  # a long input runs alone
    assert [lengths[i] for i in batches[0]] == [1200]
    assert padded_tokens(batches, lengths) == (1200 + 900 + 3 * 300 + 3 * 17, 1200)  # [300, 64, 17], [17, 5, 1]

    lengths = [8, 8, 9, 8, 30, 9, 28, 8]
    exact = plan_batches(lengths, max_tokens=1024, max_rows=64)  # the default: no padding
    assert [[lengths[i] for i in b] for b in exact] == [[30], [28], [9, 9], [8, 8, 8, 8]]
    loose = plan_batches(lengths, max_tokens=1024, max_rows=64, max_padding=0.1)
    assert [[lengths[i] for i in b] for b in loose] == [[30, 28], [9, 9, 8, 8, 8, 8]]


def test_results_return_in_input_order(models) -> None:
    model = load(models["feature-extraction"][0], batch_tokens=64, batch_rows=2)  # many small batches
    order = [3, 0, 4, 2, 1]
    expected = models["feature-extraction"][1].embed(TEXTS)
    np.testing.assert_allclose(model.embed([TEXTS[i] for i in order]), expected[order], atol=ATOL)
    padded = load(models["feature-extraction"][0], max_padding=None)  # one padded batch
    np.testing.assert_allclose(padded.embed([TEXTS[i] for i in order]), expected[order], atol=ATOL)
    tags = models["token-classification"][1]
    small = load(models["token-classification"][0], batch_tokens=32, max_padding=None)
    assert _same_entities(small.tag(TEXTS), tags.tag(TEXTS))


def _same_entities(a: list, b: list) -> bool:
    return all(
        [(e["entity_group"], e["start"], e["end"]) for e in x] == [(e["entity_group"], e["start"], e["end"]) for e in y]
        and np.allclose([e["score"] for e in x], [e["score"] for e in y], atol=ATOL)
        for x, y in zip(a, b, strict=True)
    )


def test_fill_mask_runs_the_decoder_on_mask_rows_only(models) -> None:
    """With the [MASK] rows marked in the attention mask (2), logits come back for those rows only, so the
    token budget need not bound (tokens × vocab) logits; a graph that does not offer it gives the same results."""
    from modernbert_edge.runtime.predictor import OUTPUT_BYTES

    model = load(models["fill-mask"][0], batch_tokens=10**6)
    assert model._session.mark == 2 and model.decodes_masked_rows_only
    assert model._token_budget() == 10**6
    selected = model.predict(MASKED, top_k=3)
    model._session.mark = None  # as a graph without the metadata (one made elsewhere)
    assert model._token_budget() == OUTPUT_BYTES // (4 * model.info.vocab_size)  # (B, S, vocab) logits
    every_row = model.predict(MASKED, top_k=3)
    flat = lambda results: [p for text in results for m in text for p in m]  # noqa: E731
    assert [(p["token"], p.get("sequence")) for p in flat(every_row)] == [
        (p["token"], p.get("sequence")) for p in flat(selected)
    ]
    np.testing.assert_allclose([p["score"] for p in flat(every_row)], [p["score"] for p in flat(selected)], atol=ATOL)
    assert load(models["text-classification"][0], batch_tokens=10**6)._token_budget() == 10**6  # (B, labels)


def test_many_masks_are_decoded_in_parts_with_the_same_results(models, monkeypatch) -> None:
    """Issue 24: one text with thousands of [MASK] tokens took (masks × vocab) logits in one run (9.8 GB
    for 8,000 at a base vocabulary). The marks now go to the graph in parts of DECODE_BYTES of logits,
    and the results are those of one run, `sequence` included only where a text has one mask."""
    from modernbert_edge.runtime import predictor

    model = load(models["fill-mask"][0], batch_tokens=10**6)
    mask = model.tokenizer.mask_token
    texts = [f"a {mask} b {mask} c {mask} d {mask} e {mask}", f"only one {mask} here", f"{mask} {mask} {mask}"]
    whole = model.predict(texts, top_k=3)
    decoded: list[int] = []
    run = model._session.run

    def counting(ids, attention_mask):
        decoded.append(int((attention_mask == model._session.mark).sum()))
        return run(ids, attention_mask)

    monkeypatch.setattr(model._session, "run", counting)
    monkeypatch.setattr(predictor, "DECODE_BYTES", 2 * 4 * model.info.vocab_size)  # two masks per run
    parts = model.predict(texts, top_k=3)
    assert sum(decoded) == 5 + 1 + 3 and max(decoded) == 2 and len(decoded) > 1
    assert [[[(p["token"], p.get("sequence")) for p in m] for m in r] for r in parts] == [
        [[(p["token"], p.get("sequence")) for p in m] for m in r] for r in whole
    ]
    flat = lambda results: [p["score"] for text in results for m in text for p in m]  # noqa: E731
    np.testing.assert_allclose(flat(parts), flat(whole), atol=ATOL)
    assert "sequence" in parts[1][0][0] and "sequence" not in parts[0][0][0]


# ── long inputs ─────────────────────────────────────────────────────────────────────────────────


def test_truncation_warns_with_the_dropped_count(models) -> None:
    folder, full = models["feature-extraction"]
    model = load(folder, max_length=12)
    long_text = TEXTS[2]
    n = len(full.tokenizer.encode([long_text])[0].ids)
    with pytest.warns(TruncationWarning) as record:
        got = model.embed(["bob", long_text])
    assert len(record) == 1
    w = record[0].message
    assert (w.index, w.tokens, w.dropped) == (1, n, n - 12) and f"{n - 12} tokens dropped" in str(w)
    kept = full.tokenizer.encode([long_text])[0].ids[:11] + [full.tokenizer.encode(["x"])[0].ids[-1]]  # + [SEP]
    out = full.run(np.array([kept]))["last_hidden_state"][0]
    np.testing.assert_allclose(got[1], out.mean(0) / np.linalg.norm(out.mean(0)), atol=ATOL)

    strict = load(folder, max_length=12, truncation="error")
    with pytest.raises(InputTooLongError, match=r"input 1 has \d+ tokens, more than the 12"):
        strict.embed(["bob", long_text])


def test_question_answering_truncates_the_context_only(models) -> None:
    folder, _ = models["question-answering"]
    model = load(folder, max_length=16)
    question, context = QUESTIONS[0]
    with pytest.warns(TruncationWarning, match="its context truncated"):
        got = model.answer(question, context)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        enc = model.tokenizer.encode_pairs([(question, context)])[0]
    question_tokens = len(model.tokenizer.encode([question])[0].ids) - 2  # without [CLS] [SEP]
    assert len(enc.ids) == 16 and enc.sequence_ids.count(0) == question_tokens
    assert got["end"] <= enc.offsets[-2][1]  # inside the kept part of the context
    with pytest.raises(InputTooLongError, match="question of"):
        model.answer(context + " " + context, "bob")  # the question alone fills the model


def test_truncated_mask_is_reported(models) -> None:
    model = load(models["fill-mask"][0], max_length=8)
    with pytest.warns(TruncationWarning), pytest.raises(MissingMaskError, match="truncated away"):
        model.fill_mask("the quick brown fox jumps over a lazy dog [MASK]")


# ── bad inputs and folders ──────────────────────────────────────────────────────────────────────


def test_bad_inputs_raise_specific_errors(models) -> None:
    embed, fill, qa = models["feature-extraction"][1], models["fill-mask"][1], models["question-answering"][1]
    with pytest.raises(EmptyInputError, match="input 1 is empty"):
        embed.embed(["bob", ""])
    with pytest.raises(EmptyInputError, match="input 0 is empty"):
        embed.embed(" \n\t")
    with pytest.raises(InputError, match="input 0 is not a string"):
        embed.embed([None])
    with pytest.raises(MissingMaskError, match=r"input 1 has no \[MASK\] token"):
        fill.fill_mask(["the [MASK] fox", "no mask here"])
    with pytest.raises(EmptyInputError, match="input 0 has an empty context"):
        qa.answer("who?", " ")
    with pytest.raises(TaskMismatchError, match="fill-mask model"):
        fill.classify("bob")
    with pytest.raises(TaskMismatchError):
        fill.embed("bob")
    with pytest.raises(modernbert_edge.UserError, match="top_k must be a positive integer"):
        fill.fill_mask("the [MASK]", top_k=0)
    results = fill.predict(["the [MASK] fox", "", "no mask", "a [MASK]"], errors="return")
    assert isinstance(results[1], EmptyInputError) and isinstance(results[2], MissingMaskError)
    assert results[0] == [fill.fill_mask("the [MASK] fox")] and results[3] == [fill.fill_mask("a [MASK]")]


def test_run_checks_token_ids(models) -> None:
    model = models["fill-mask"][1]
    out = model.run([1, 279, 4, 2])
    assert out["logits"].shape == (1, 4, model.info.vocab_size)
    with pytest.raises(modernbert_edge.UserError, match="outside the model's vocabulary"):
        model.run([[1, model.info.vocab_size, 2]])
    with pytest.raises(modernbert_edge.UserError, match="same shape"):
        model.run([[1, 5, 2]], [[1, 1]])
    with pytest.raises(InputTooLongError):
        model.run(np.ones((1, model.info.max_position_embeddings + 1), np.int64))


def _damaged(folder: Path, tmp_path: Path, damage: Callable[[Path], object]) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    damage(copy)
    return copy


def _edit_manifest(folder: Path, **changes: object) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: shutil.rmtree(f), "does not exist"),
        # without manifest.json a folder is read as one made elsewhere (runtime/foreign.py) if it has a graph
        (lambda f: [(f / n).unlink() for n in ("manifest.json", "model.onnx")], "has no manifest.json"),
        (lambda f: (f / "model.onnx").unlink(), "has no model.onnx"),
        (lambda f: (f / "model.onnx").write_bytes((f / "model.onnx").read_bytes()[:5000]), "could not be loaded"),
        (lambda f: (f / "config.json").unlink(), "has no config.json"),
        (lambda f: (f / "tokenizer.json").write_text("{not json"), "could not be read by tokenizers"),
        (lambda f: (f / "tokenizer.json").unlink(), "has no tokenizer.json, though its manifest lists one"),
        (lambda f: _edit_manifest(f, task="summarization"), "does not run"),
        (lambda f: _edit_manifest(f, outputs=["logits"]), "inconsistent"),
    ],
)
def test_damaged_folders_raise_model_folder_error(models, tmp_path, damage, message) -> None:
    folder = _damaged(models["question-answering"][0], tmp_path, damage)
    with pytest.raises(ModelFolderError, match=message):
        load(folder)


def test_folder_without_tokenizer_takes_token_ids(models, tmp_path) -> None:
    def strip(f: Path) -> None:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (f / name).unlink()
        _edit_manifest(f, tokenizer_files=[])

    model = load(_damaged(models["feature-extraction"][0], tmp_path, strip))
    assert model.tokenizer is None and model.describe()["tokenizer"] is None
    ids = models["feature-extraction"][1].tokenizer.encode(["bob"])[0].ids
    np.testing.assert_allclose(
        model.run([ids])["last_hidden_state"], models["feature-extraction"][1].run([ids])["last_hidden_state"]
    )
    with pytest.raises(MissingTokenizerError, match="pass token ids to Model.run"):
        model.embed("bob")


# ── threads ─────────────────────────────────────────────────────────────────────────────────────


def test_threads_sharing_a_model_get_serial_results(models) -> None:
    embed, tag = models["feature-extraction"][1], models["token-classification"][1]
    jobs = [(embed.embed, TEXTS), (tag.tag, TEXTS), (embed.embed, TEXTS[::-1]), (tag.tag, TEXTS[1:])] * 3
    serial = [fn(texts) for fn, texts in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda job: job[0](job[1]), jobs))
    for s, c in zip(serial, concurrent, strict=True):
        if isinstance(s, np.ndarray):
            np.testing.assert_allclose(c, s, atol=1e-6)
        else:
            assert _same_entities(c, s)


@pytest.mark.parametrize(("spinning", "allowed"), [(None, "0"), ("off", "0"), ("brief", "1"), ("on", "1"), (True, "1")])
def test_spinning_reaches_the_session(models, spinning, allowed) -> None:
    folder, default = models["feature-extraction"]
    model = load(folder, **({} if spinning is None else {"spinning": spinning}))
    options = model._session._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == allowed
    np.testing.assert_allclose(model.embed(TEXTS), default.embed(TEXTS), atol=1e-6)
    with pytest.raises(modernbert_edge.UserError, match="spinning must be one of off, brief, on"):
        load(folder, spinning="fast")


def test_an_onnxruntime_too_old_for_the_graph_is_named(monkeypatch):
    """A graph that an older onnxruntime refuses (an op or attribute it does not know) is not called
    corrupt there: the error names the version the project's graphs need."""
    import onnx
    import onnxruntime as ort

    from modernbert_edge.runtime.errors import ModelFolderError
    from modernbert_edge.runtime.session import MIN_ONNXRUNTIME, create_session

    node = onnx.helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.microsoft")
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("com.microsoft", 1)]
    ).SerializeToString()
    with pytest.raises(ModelFolderError, match="export the model again"):
        create_session(model)  # this onnxruntime is recent: the file is what is wrong
    monkeypatch.setattr(ort, "__version__", "1.23.2")
    with pytest.raises(ModelFolderError, match=f"need onnxruntime >= {MIN_ONNXRUNTIME}: pip install -U onnxruntime"):
        create_session(model)


def padded_tokens(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> tuple[int, int]:
    """(total padded tokens, largest batch in padded tokens) of a batch plan."""
    sizes = [len(b) * max(lengths[i] for i in b) for b in batches if b]
    return sum(sizes), max(sizes, default=0)
