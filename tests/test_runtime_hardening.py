"""The runtime under bad inputs and faults: each input fails on its own, tokenization and line reading
are bounded before they happen, JSON output is strict, and stdout failures end in one sentence.

Property-based tests run the `ci` hypothesis profile by default; HYPOTHESIS_PROFILE=full runs the
full budget (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from modernbert_edge.cli import app
from modernbert_edge.errors import UserError
from modernbert_edge.runtime import (
    InputError,
    InputTooLongError,
    ModelFolderError,
    TruncationWarning,
    load,
)
from modernbert_edge.runtime.inputs import line_cap
from modernbert_edge.runtime.session import OrtSession
from modernbert_edge.runtime.tokenize import CHARS_PER_TOKEN

runner = CliRunner()
MBEDGE = [sys.executable, "-m", "modernbert_edge.cli"]
TASKS = ("feature-extraction", "fill-mask", "text-classification", "token-classification", "question-answering")


@pytest.fixture(scope="module")
def folders(exported_factory):
    return {task: exported_factory(task) for task in TASKS}


@pytest.fixture(scope="module")
def models(folders):
    return {task: load(folder, threads=1) for task, folder in folders.items()}


def _strict(constant: str) -> None:
    raise AssertionError(f"{constant} in the output: not strict JSON")


def _lines(stdout: str) -> list[dict]:
    return [json.loads(line, parse_constant=_strict) for line in stdout.splitlines()]


def _mbedge(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*MBEDGE, *args], capture_output=True, timeout=120, **kwargs)


# ── 1. inputs fail one at a time ───────────────────────────────────────────────────────────────────


def test_lone_surrogates_and_wrong_types_fail_alone(models) -> None:
    model = models["fill-mask"]
    results = model.predict(["a [MASK] \ud800", "b [MASK]", 5, None, "\udcff"], errors="return")
    assert isinstance(results[1], list) and results[1][0][0]["token_str"]
    assert [type(r).__name__ for r in results[::2]] == ["InputError"] * 3
    assert "lone surrogate (U+D800 at character 10)" in str(results[0]) and "not a string (got int)" in str(results[2])
    with pytest.raises(InputError, match="lone surrogate"):
        model.fill_mask("x [MASK] \ud800")
    with pytest.raises(InputError, match="its context has a lone surrogate"):
        models["question-answering"].answer("who?", "alice \ud800 works")


class _FakePanic(BaseException):
    """What PyO3 raises for a Rust panic: a BaseException from the pyo3_runtime module."""


_FakePanic.__name__ = _FakePanic.__qualname__ = "PanicException"
_FakePanic.__module__ = "pyo3_runtime"


class _Tampered:
    """A tokenizer that fails on texts containing 'boom' (a panic) or 'type' (a TypeError)."""

    def __init__(self, real, stop=None) -> None:
        self.real, self.stop = real, stop

    def _check(self, text) -> None:
        text = " ".join(text) if isinstance(text, tuple) else text
        if "stop" in text and self.stop is not None:
            raise self.stop
        if "boom" in text:
            raise _FakePanic("called `Option::unwrap()` on a `None` value")
        if "type" in text:
            raise TypeError("TextEncodeInput must be Union[...]")

    def encode_batch(self, texts):
        for t in texts:
            self._check(t)
        return self.real.encode_batch(texts)

    def encode(self, *args):
        self._check(args if len(args) > 1 else args[0])
        return self.real.encode(*args)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_tokenizer_errors_and_panics_fail_alone(folders, monkeypatch) -> None:
    model = load(folders["fill-mask"], threads=1)
    monkeypatch.setattr(model.tokenizer, "_plain", _Tampered(model.tokenizer._plain))
    results = model.predict(["a [MASK] boom", "b [MASK]", "type [MASK]", "c [MASK]"], errors="return")
    assert isinstance(results[1], list) and isinstance(results[3], list)
    assert str(results[0]) == (
        "input 0 could not be tokenized (PanicException: called `Option::unwrap()` on a `None` value)."
    )
    assert "could not be tokenized (TypeError" in str(results[2])
    for stop in (KeyboardInterrupt(), SystemExit(3)):  # never swallowed
        monkeypatch.setattr(model.tokenizer, "_plain", _Tampered(model.tokenizer._plain.real, stop))
        with pytest.raises(type(stop)):
            model.predict(["stop [MASK]"], errors="return")


def test_run_keeps_going_past_surrogates_and_deep_json(folders) -> None:
    stdin = "\n".join(
        ['{"text": "a [MASK] \\ud800"}', "[" * 100_000, '{"a":' * 100_000, '{"text": "b [MASK]"}', '{"text": 7}']
    )
    result = runner.invoke(app, ["run", str(folders["fill-mask"]), "--format", "jsonl"], input=stdin)
    assert result.exit_code == 2
    rows = _lines(result.stdout)
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4] and "predictions" in rows[3]
    assert "lone surrogate" in rows[0]["error"] and "not a string" in rows[4]["error"]
    assert (
        rows[1]["error"]
        == rows[2]["error"].replace("line 3", "line 2")
        == ("line 2 of stdin is nested too deeply to be read as JSON.")
    )
    assert "4 of 5 inputs failed" in result.stderr and "Traceback" not in result.stderr
    auto = runner.invoke(app, ["run", str(folders["fill-mask"])], input='{"a":' * 100_000 + '\n{"text": "[MASK]"}\n')
    assert auto.exit_code == 2 and [list(r) for r in _lines(auto.stdout)] == [
        ["index", "error"],
        ["index", "predictions"],
    ]


def test_run_non_utf8_argument_is_that_arguments_error(folders) -> None:
    result = _mbedge("run", str(folders["fill-mask"]), b"a [MASK] \xff".decode("utf-8", "surrogateescape"), "b [MASK]")
    assert result.returncode == 2, result.stderr
    rows = _lines(result.stdout.decode())
    assert rows[0]["error"] == "argument 1 is not valid UTF-8 (byte 0xff at byte 10)." and "predictions" in rows[1]
    assert b"Traceback" not in result.stderr


# ── 2. tokenization and line reading are bounded ─────────────────────────────────────────────────


def test_texts_are_cut_to_max_chars_before_tokenizing(models) -> None:
    model = load(models["feature-extraction"].info.folder, threads=1, max_length=8)
    tok = model.tokenizer
    assert tok.max_chars == CHARS_PER_TOKEN * 8
    short = "alice works at acme"
    padded = short + " " * tok.max_chars  # too long by the character rule, whatever its tokens
    with pytest.warns(TruncationWarning, match=r"more than 512 characters.*truncated, at least \d+ tokens dropped"):
        model.embed([padded])
    long = "bob " * 10_000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        np.testing.assert_allclose(model.embed([long]), model.embed([long[: tok.max_chars]]), atol=1e-6)
    assert "at least" in str(caught[0].message) and "at least" not in str(caught[1].message)
    strict = load(model.info.folder, threads=1, max_length=8, truncation="error")
    with pytest.raises(InputTooLongError, match="more than 512 characters"):
        strict.embed(padded)
    assert isinstance(strict.predict([padded, short], errors="return")[0], InputTooLongError)
    qa = load(models["question-answering"].info.folder, threads=1, max_length=16)
    with pytest.raises(InputTooLongError, match="has a question of more than 1024 characters"):
        qa.answer("who " * 300, "alice")
    with pytest.warns(TruncationWarning, match="its context truncated"):
        assert qa.answer("who?", "alice works " * 200)["answer"]


def test_fill_mask_after_the_cut_says_truncated(models) -> None:
    model = load(models["fill-mask"].info.folder, threads=1, max_length=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (error,) = model.predict(["x" * 1000 + " [MASK]"], errors="return")
    assert "truncated away" in str(error)


def test_overlong_lines_are_cut_or_refused_without_being_held(folders, tmp_path) -> None:
    folder = str(folders["feature-extraction"])
    cap = line_cap(CHARS_PER_TOKEN * 8)
    path = tmp_path / "long.txt"
    path.write_bytes(b"alice\n" + "é".encode() * cap + b"\nbob")  # the cap falls inside a 2-byte character
    result = runner.invoke(app, ["run", folder, "-i", str(path), "--max-length", "8"])
    assert result.exit_code == 0, result.output
    assert len(_lines(result.stdout)) == 3 and f"line 2 of {path} has more than 512 characters" in result.stderr
    jsonl = tmp_path / "long.jsonl"
    jsonl.write_text(json.dumps({"text": "é" * cap}) + '\n{"text": "bob"}\n')
    result = runner.invoke(app, ["run", folder, "-i", str(jsonl), "--max-length", "8"])
    assert result.exit_code == 2
    rows = _lines(result.stdout)
    assert rows[0]["error"] == (
        f"line 1 of {jsonl} is longer than {cap} bytes, the most a JSONL line may hold for this model "
        "(it reads only the start of a longer text): shorten its text."
    )
    assert "embedding" in rows[1]


def test_peak_rss_of_a_10mb_line_without_newline(folders) -> None:
    """mbedge run on a 10 MB stdin line with --max-length 64 stays under 300 MB (a fresh process)."""
    code = (
        "import sys, runpy\nfrom modernbert_edge.timing import peak_rss_mb\n"
        "sys.argv = ['mbedge'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('modernbert_edge.cli', run_name='__main__')\n"
        "except SystemExit as e:\n    sys.stderr.write(f'exit {e.code} peak {peak_rss_mb():.0f}\\n')\n"
    )
    line = b"a [MASK] b " * 1_000_000  # 11 MB, no newline
    result = subprocess.run(
        [sys.executable, "-c", code, "run", str(folders["fill-mask"]), "--max-length", "64", "--batch-tokens", "64"],
        input=line,
        capture_output=True,
        timeout=120,
    )
    last = result.stderr.decode().strip().splitlines()[-1].split()
    assert last[:2] == ["exit", "0"], result.stderr.decode()[-2000:]
    assert float(last[3]) < 300, f"peak RSS {last[3]} MB"
    assert len(_lines(result.stdout.decode())) == 1


# ── 3. strict JSON ─────────────────────────────────────────────────────────────────────────────────


def test_non_finite_results_are_errors_not_nan(folders, monkeypatch) -> None:
    real, calls = OrtSession.run, []

    def poisoned(self, ids, mask, **optional):  # the first batch's outputs are NaN
        calls.append(ids.shape)
        out = real(self, ids, mask, **optional)
        return {k: np.full_like(v, np.nan) for k, v in out.items()} if len(calls) == 1 else out

    folder = str(folders["feature-extraction"])
    monkeypatch.setattr(OrtSession, "run", poisoned)
    result = runner.invoke(app, ["run", folder, "alice", "bob works at acme"])
    assert result.exit_code == 2
    rows = _lines(result.stdout)
    assert len(calls) == 2 and sorted(len(r) and next(iter(set(r) - {"index"})) for r in rows) == ["embedding", "error"]
    (error,) = [r["error"] for r in rows if "error" in r]
    assert error.startswith("argument ") and error.endswith(
        "gave a non-finite result (NaN or infinity), which JSON cannot hold."
    )


# ── 4. wrong calls, odd options, stdin and stdout ─────────────────────────────────────────────────


def test_model_run_and_public_methods_refuse_bad_calls(models) -> None:
    model = models["fill-mask"]
    ones = np.ones((1, 4), np.int64)
    bad_calls = [
        (lambda: model.run(np.zeros((0, 4), np.int64)), "empty batch"),
        (lambda: model.run(np.zeros((2, 0), np.int64)), "empty batch"),
        (lambda: model.run(np.ones((2, 4), np.int64), np.array([[1, 1, 0, 0], [0, 0, 0, 0]])), r"rows \[1\]"),
        (lambda: model.run(ones, mask_positions=np.array([4])), r"within \[0, 4\)"),
        (lambda: model.run(ones, mask_positions=np.array([-1])), r"within \[0, 4\)"),
        (lambda: model.run(ones, mask_positions=np.array([0.5])), "flat indices"),
        (lambda: model.run([[1, 2], [3]]), "not an array of token ids"),
        (lambda: model.fill_mask(None), r"fill_mask\(\) must be a text or a list of texts \(got NoneType\)"),
        (lambda: model.fill_mask(b"x [MASK]"), "got bytes"),
        (lambda: model.fill_mask("x [MASK]", top_k="3"), "top_k must be a positive integer"),
        (lambda: model.predict(7, errors="return"), "predict"),
        (lambda: models["feature-extraction"].embed(3.5), "embed"),
        (lambda: models["feature-extraction"].embed("x", normalize="yes"), "normalize must be True or False"),
        (lambda: models["token-classification"].tag("x", ignore_labels=5), "ignore_labels"),
        (lambda: models["question-answering"].answer(None, "alice"), r"answer\(\) must be a question"),
    ]
    for call, message in bad_calls:
        with pytest.raises(UserError, match=message):
            call()
    assert (
        model.run(np.array([[1, 5, 6, 2], [1, 5, 0, 0]]), np.array([[1, 1, 1, 1], [1, 1, 0, 0]]))["logits"].shape[0]
        == 2
    )


@pytest.mark.parametrize("threads", ["-1", "100000"])
def test_threads_are_bounded(folders, threads) -> None:
    result = runner.invoke(app, ["run", str(folders["fill-mask"]), "--threads", threads, "x [MASK]"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: --threads must be an integer from 0 (one per physical core) to ")
    with pytest.raises(UserError, match="threads must be"):
        load(folders["fill-mask"], threads=True)


def test_stdin_closed_or_empty_and_stdout_full_or_closed(folders) -> None:
    folder = str(folders["fill-mask"])
    closed = subprocess.run(
        [*MBEDGE, "run", folder],
        capture_output=True,
        stdin=None,
        close_fds=True,
        timeout=120,
        preexec_fn=lambda: os.close(0),
    )
    assert closed.returncode == 2 and closed.stderr.decode().startswith("error: no input: stdin is closed")
    empty = _mbedge("run", folder, stdin=subprocess.DEVNULL)
    assert (empty.returncode, empty.stderr.decode()) == (2, "error: no input: the input was empty.\n")
    with open("/dev/full", "wb") as full:
        result = subprocess.run([*MBEDGE, "run", folder, "x [MASK]"], stdout=full, stderr=subprocess.PIPE, timeout=120)
    assert (result.returncode, result.stderr.decode()) == (
        2,
        "error: could not write the results to stdout (No space left on device).\n",
    )
    many = b"x [MASK] y\n" * 3000
    piped = subprocess.run(
        f"{' '.join(MBEDGE)} run {folder} | head -c 10",
        shell=True,
        input=many,
        capture_output=True,
        timeout=120,
        executable="/bin/bash",
    )
    assert piped.stdout == b'{"index": ' and piped.stderr == b""
    status = subprocess.run(
        f"set -o pipefail; {' '.join(MBEDGE)} run {folder} | head -c 10 > /dev/null",
        shell=True,
        input=many,
        capture_output=True,
        timeout=120,
        executable="/bin/bash",
    )
    assert status.returncode == 141 and status.stderr == b""


# ── 6. the model file stays inside its folder ─────────────────────────────────────────────────────


def test_model_file_linked_outside_the_folder_is_refused(folders, tmp_path) -> None:
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(folders["fill-mask"], folder)
    outside = tmp_path / "elsewhere.onnx"
    (folder / "model.onnx").rename(outside)
    (folder / "model.onnx").symlink_to(outside)
    with pytest.raises(ModelFolderError, match=r"is a link to .*outside the model folder"):
        load(folder)
    result = runner.invoke(app, ["run", str(folder), "x [MASK]"])
    assert result.exit_code == 2 and "outside the model folder" in result.stderr


# ── 5. property-based: nothing but UserErrors ─────────────────────────────────────────────────────

ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)  # all of Unicode, surrogates too
ANY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.binary(max_size=8) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3) | st.tuples(inner, inner),
    max_leaves=6,
)
INPUT = ANY_TEXT | ANY_TEXT.map(lambda t: f"{t} [MASK] {t}") | ANY_VALUE


def _user_error_or(call):
    try:
        return call()
    except UserError as e:
        return e


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(inputs=st.lists(INPUT, max_size=4) | ANY_VALUE, option=ANY_VALUE | st.integers(1, 6))
def test_any_input_to_the_api_gives_results_or_user_errors(models, inputs, option) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        for task, model in models.items():
            if task == "question-answering":
                pairs = [(x, x) if isinstance(x, str) else x for x in inputs] if isinstance(inputs, list) else inputs
                _user_error_or(lambda m=model: m.answer(inputs, inputs, top_k=option))
                results = _user_error_or(lambda m=model, p=pairs: m.predict(p, errors="return"))
            else:
                method = getattr(model, model.resolve_task(None).method)
                _user_error_or(lambda f=method: f(inputs))
                if "top_k" in model.resolve_task(None).options:
                    _user_error_or(lambda m=model: m.predict(inputs, top_k=option, errors="return"))
                results = _user_error_or(lambda m=model: m.predict(inputs, errors="return"))
            if isinstance(inputs, list) and not isinstance(results, UserError):
                assert len(results) == len(inputs)


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["text", "question", "context", "x"]) | ANY_TEXT, inner, max_size=3)
    ),
    max_leaves=6,
)
LINE = (
    JSON_VALUE.map(lambda v: json.dumps(v).encode())
    | JSON_VALUE.map(lambda v: json.dumps({"text": v}).encode())
    | st.binary(max_size=30)
    | st.integers(1, 3000).map(lambda n: b'{"text":' + b"[" * n + b"]" * n + b"}")
    | ANY_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass"))
).map(lambda b: b.replace(b"\n", b" "))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=st.lists(LINE, min_size=1, max_size=5), task=st.sampled_from(["fill-mask", "question-answering"]))
def test_any_jsonl_lines_give_one_json_line_each(folders, lines, task) -> None:
    stdin = b"\n".join(lines) + b"\n"
    result = runner.invoke(app, ["run", str(folders[task]), "--format", "jsonl", "--max-length", "32"], input=stdin)
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    rows = _lines(result.stdout)
    if rows or result.exit_code == 0:
        assert [r["index"] for r in rows] == list(range(len(rows)))
    assert "Traceback" not in result.stderr


def test_errors_pickle_as_they_were_made() -> None:
    """Errors cross process boundaries (Ray workers): each comes back with the same message and fields."""
    import pickle

    from modernbert_edge.errors import OptionError
    from modernbert_edge.runtime.errors import EmptyInputError, InputError, InputTooLongError

    errors = [
        InputError("is not a string", 2),
        EmptyInputError("is empty", 0),
        InputTooLongError("has 9 tokens, more than the 8 this model reads", 3, "it"),
        InputTooLongError("has a question of 9 tokens, which leaves no room", None),
        OptionError("top_k must be a positive integer, got 0.", "top_k"),
    ]
    for error in errors:
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error) and vars(back) == vars(error), error
