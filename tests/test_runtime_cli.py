"""`mbedge run` and `mbedge info`: inputs from arguments, files and stdin; JSON lines; bad lines."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from typer.testing import CliRunner

from modernbert_edge.cli import app
from modernbert_edge.runtime import load

runner = CliRunner()


def _lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.fixture(scope="module")
def folders(exported_factory):
    return {
        task: exported_factory(task)
        for task in ("feature-extraction", "fill-mask", "token-classification", "question-answering")
    }


def test_run_arguments_match_the_api(folders) -> None:
    folder = folders["feature-extraction"]
    result = runner.invoke(app, ["run", str(folder), "alice works at acme", "bob", "--pooling", "cls"])
    assert result.exit_code == 0, result.output
    rows = _lines(result.stdout)
    assert [r["index"] for r in rows] == [0, 1]
    expected = load(folder).embed(["alice works at acme", "bob"], pooling="cls")
    np.testing.assert_allclose([r["embedding"] for r in rows], expected, atol=1e-6)
    spinning = runner.invoke(
        app, ["run", str(folder), "alice works at acme", "bob", "--pooling", "cls", "--spinning", "on"]
    )
    assert spinning.exit_code == 0, spinning.output
    np.testing.assert_allclose([r["embedding"] for r in _lines(spinning.stdout)], expected, atol=1e-6)
    shown = runner.invoke(app, ["run", str(folder), "alice", "bob", "--progress"])
    assert "2/2 inputs" in shown.stderr and len(_lines(shown.stdout)) == 2


def test_run_file_reports_bad_lines_and_keeps_the_others(folders, tmp_path) -> None:
    path = tmp_path / "texts.txt"
    path.write_bytes(b"the quick [MASK] fox\n\nbad \xff byte [MASK]\nno mask here\nalice [MASK] at acme")
    result = runner.invoke(app, ["run", str(folders["fill-mask"]), "--input", str(path), "--top-k", "2"])
    assert result.exit_code == 2
    rows = _lines(result.stdout)
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    assert len(rows[0]["predictions"][0]) == 2 and "predictions" in rows[4]
    assert rows[1]["error"] == f"line 2 of {path} is empty (or only whitespace)."
    assert rows[2]["error"] == f"line 3 of {path} is not valid UTF-8 (byte 0xff at column 5)."
    assert rows[3]["error"] == f"line 4 of {path} has no [MASK] token to fill."
    assert f"error: line 4 of {path}" in result.stderr and "3 of 5 inputs failed" in result.stderr


def test_run_jsonl_on_stdin_with_stop(folders) -> None:
    stdin = '{"text": "alice works at acme corp"}\n{"txt": "x"}\n{"text": "bob"}\n'
    folder = str(folders["token-classification"])
    result = runner.invoke(app, ["run", folder, "--aggregation", "first", "--on-error", "stop"], input=stdin)
    assert result.exit_code == 2
    rows = _lines(result.stdout)
    assert len(rows) == 1 and rows[0]["index"] == 0 and isinstance(rows[0]["entities"], list)
    assert 'line 2 of stdin has no "text" field' in result.stderr and "stopped" in result.stderr

    skipped = runner.invoke(app, ["run", folder, "--input", "-"], input=stdin + "not json\n")
    assert [r.get("error", "") for r in _lines(skipped.stdout)][1:] == [
        'line 2 of stdin has no "text" field.',
        "",
        "line 4 of stdin is not valid JSON (Expecting value at column 1).",
    ]


def test_run_question_answering_inputs(folders, tmp_path) -> None:
    folder = str(folders["question-answering"])
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "who works?", "context": "alice works at acme"}) + "\n")
    result = runner.invoke(app, ["run", folder, "-i", str(path), "--top-k", "2"])
    assert result.exit_code == 0, result.output
    answers = _lines(result.stdout)[0]["answer"]
    assert len(answers) == 2 and all("alice works at acme"[a["start"] : a["end"]] == a["answer"] for a in answers)
    single = runner.invoke(app, ["run", folder, "--question", "who works?", "alice works at acme"])
    assert _lines(single.stdout)[0]["answer"] == answers[0]
    missing = runner.invoke(app, ["run", folder, "alice works at acme"])
    assert missing.exit_code == 2 and "--question" in missing.stderr


def test_run_warns_about_truncation_by_line(folders, tmp_path) -> None:
    path = tmp_path / "long.txt"
    path.write_text("bob\n" + "the quick brown fox jumps over a lazy dog " * 3 + "\n")
    result = runner.invoke(app, ["run", str(folders["feature-extraction"]), "-i", str(path), "--max-length", "8"])
    assert result.exit_code == 0
    assert f"warning: line 2 of {path} has" in result.stderr and "tokens dropped" in result.stderr
    strict = ["--max-length", "8", "--truncation", "error"]
    result = runner.invoke(app, ["run", str(folders["feature-extraction"]), "-i", str(path), *strict])
    assert result.exit_code == 2 and f"line 2 of {path} has" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "classify", "x"], "holds a fill-mask model"),
        (["--pooling", "mean", "the [MASK]"], "fill-mask takes no option --pooling (it takes --top-k)"),
        (["--on-error", "ignore", "the [MASK]"], "'ignore' is not one of 'skip', 'stop'"),
        (["--top-k", "0", "the [MASK]"], "--top-k must be a positive integer"),
        (["--spinning", "fast", "the [MASK]"], "'fast' is not one of 'off', 'brief', 'on'"),
    ],
)
def test_run_bad_options(folders, args, message) -> None:
    result = runner.invoke(app, ["run", str(folders["fill-mask"]), *args])
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one line, no traceback


def test_option_errors_name_flags_on_the_cli_and_python_names_elsewhere(folders) -> None:
    """The library (and the server's JSON) say top_k; the CLI says --top-k, for every option it names, and
    a pickled error (Ray) keeps them."""
    from modernbert_edge.errors import OptionError

    model = load(folders["fill-mask"])
    with pytest.raises(OptionError) as raised:
        model.predict(["the [MASK]"], task="fill-mask", top_k=2, max_answer_len=3)
    error = pickle.loads(pickle.dumps(raised.value))
    assert str(error) == str(raised.value) == "fill-mask takes no option max_answer_len (it takes top_k)."
    assert error.as_flags() == "fill-mask takes no option --max-answer-len (it takes --top-k)."
    result = runner.invoke(app, ["run", str(folders["fill-mask"]), "--max-length", "2", "x"])
    assert result.exit_code == 2 and result.stderr.startswith("error: --max-length must be at least"), result.stderr


def test_run_rejects_utf16_and_missing_files(folders, tmp_path) -> None:
    path = tmp_path / "utf16.txt"
    path.write_bytes("the [MASK] fox\n".encode("utf-16"))
    result = runner.invoke(app, ["run", str(folders["fill-mask"]), "-i", str(path)])
    assert result.exit_code == 2 and f"{path} is not UTF-8 text" in result.stderr
    result = runner.invoke(app, ["run", str(folders["fill-mask"]), "-i", str(tmp_path / "nope.txt")])
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_embed_task_check_and_info(folders, tmp_path) -> None:
    folder = str(folders["feature-extraction"])
    assert runner.invoke(app, ["run", folder, "--task", "embed", "bob"]).exit_code == 0
    info = runner.invoke(app, ["info", folder])
    assert info.exit_code == 0 and "feature-extraction" in info.stdout and "tokenizer.json" in info.stdout
    as_json = json.loads(runner.invoke(app, ["info", folder, "--json"]).stdout)
    assert as_json["outputs"] == {"last_hidden_state": ["batch", "sequence", 64]}
    broken = runner.invoke(app, ["info", str(tmp_path)])
    assert broken.exit_code == 2 and "has no manifest.json" in broken.stderr


def test_info_says_a_forced_folder_failed_its_gate(folders, tmp_path) -> None:
    forced = tmp_path / "forced"
    args = ["quantize", str(folders["fill-mask"]), str(forced), "--min-cosine", "0.9999999", "--force"]
    assert runner.invoke(app, args).exit_code == 0
    assert json.loads((forced / "manifest.json").read_text())["fidelity"]["gate"]["status"] == "forced"
    text = runner.invoke(app, ["info", str(forced)])
    assert text.exit_code == 0
    (line,) = [line for line in text.stdout.splitlines() if "FAILED its fidelity gate" in line]
    assert "< --min-cosine 0.9999999" in line and line.endswith("written with --force"), line
    as_json = json.loads(runner.invoke(app, ["info", str(forced), "--json"]).stdout)
    assert any("FAILED its fidelity gate" in line for line in as_json["int8"])


def test_info_points_to_the_benchmark_that_exists() -> None:
    """The int8 speed figures name a document of this repository that holds them."""
    import pathlib
    import re

    from modernbert_edge.runtime.engines import INT8_SPEED

    root = pathlib.Path(__file__).resolve().parent.parent
    for line in INT8_SPEED.values():
        for doc in re.findall(r"docs/[\w./-]+\.md", line):
            assert (root / doc).is_file(), (line, doc)
        assert "README, Benchmark" not in line
    bench = (root / "docs" / "bench.md").read_text()
    assert "2.99×" in bench and "4.43×" in bench  # the 3.0-4.4x of INT8_SPEED's int32 line


def test_calibration_that_is_a_folder_is_one_sentence(folders, tmp_path) -> None:
    folder = str(folders["fill-mask"])
    for args in (["compare", folder, folder], ["quantize", folder, str(tmp_path / "out")]):
        result = runner.invoke(app, [*args, "--calibration", str(tmp_path)])
        assert result.exit_code == 2, result.output
        assert result.stderr == f"error: calibration file {tmp_path} is a folder; give a file of texts.\n"
    assert not (tmp_path / "out").exists()
