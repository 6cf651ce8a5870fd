"""`mbedge --help` and each command's --help work where numpy, tokenizers, onnxruntime (and torch, onnx,
...) cannot be imported: the CLI imports what a command needs only when the command runs. The shared
options (modernbert_edge/cli_options.py) have one name, one help text and one default on every command
that takes them, and list their choices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import typer

from modernbert_edge.cli import app

BLOCKED = ("numpy", "tokenizers", "onnxruntime", "torch", "transformers", "optimum", "onnx", "psutil")
# The commands, written out (not read from the app under test, so a lost command fails).
EXPECTED_COMMANDS = {
    "export", "parity", "quantize", "compare", "bench", "run", "info", "batch", "serve", "loadtest", "demo",
}  # fmt: skip
# Each shared option and the commands that take it (issue 22: one meaning and default across them).
SHARED = {
    "--threads": {"run", "serve", "batch", "bench", "demo"},
    "--engine": {"run", "info", "serve", "batch", "bench", "quantize", "compare"},
    "--max-length": {"run", "serve"},
    "--top-k": {"run", "batch"},
    "--file": {"run", "info", "quantize"},
    "--prompt-name": {"run", "batch"},
    "--dim": {"run", "batch"},
    "--pooling": {"run", "batch"},
    "--aggregation": {"run", "batch"},
}
CHOICES = {"--engine": "auto|onnxruntime|openvino", "--spinning": "off|brief|on", "--truncation": "truncate|error"}

SITECUSTOMIZE = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {blocked!r}:
                raise ImportError(f"blocked import of {{name}}")
            return None

    sys.meta_path.insert(0, Block())
    """
).format(blocked=BLOCKED)

COMMANDS = typer.main.get_command(app).commands  # {name: click command}


@pytest.fixture(scope="module")
def blocked_env(tmp_path_factory) -> dict[str, str]:
    """An environment whose interpreter runs a sitecustomize that makes the BLOCKED imports fail."""
    folder = tmp_path_factory.mktemp("blocked")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "COLUMNS": "200", "NO_COLOR": "1"}


HELP_SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, sys

    import typer

    blocked = True
    for name in ("numpy", "tokenizers", "onnxruntime"):
        try:
            __import__(name)
            blocked = False
        except ImportError:
            pass
    from modernbert_edge.cli import app

    cli = typer.main.get_command(app)
    pages = {{}}
    for name in cli.commands:
        page = io.StringIO()
        with contextlib.redirect_stdout(page):
            code = cli.main([name, "--help"], prog_name="mbedge", standalone_mode=False)
        pages[name] = [code, page.getvalue()]
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r})
    print(json.dumps({{"blocked": blocked, "pages": pages, "heavy": heavy}}))
    """
).format(blocked=BLOCKED)


def test_help_lists_every_command_without_onnxruntime(blocked_env) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modernbert_edge.cli", "--help"], capture_output=True, text=True, env=blocked_env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in EXPECTED_COMMANDS:
        assert name in proc.stdout, name


def test_each_command_help_without_onnxruntime(blocked_env) -> None:
    proc = subprocess.run([sys.executable, "-c", HELP_SCRIPT], capture_output=True, text=True, env=blocked_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["blocked"] and report["heavy"] == []  # the blocker works, and nothing got past it
    assert set(report["pages"]) == EXPECTED_COMMANDS
    for name, (code, page) in report["pages"].items():
        assert code == 0 and "Usage: mbedge " + name in page, name
        for option, commands in SHARED.items():
            assert (option in page) == (name in commands), (name, option)
        for option, choices in CHOICES.items():
            if option in page:
                assert choices in page, (name, option)  # the choices are listed, from the Enum


def test_shared_options_have_one_help_and_default() -> None:
    """Every command that takes a shared option gives it the same help text and default."""
    for option, commands in SHARED.items():
        seen = set()
        for name in commands:
            (param,) = [p for p in COMMANDS[name].params if option in p.opts]
            default = getattr(param.default, "value", param.default)
            seen.add((param.help, repr(default)))
        assert len(seen) == 1, (option, seen)


def test_failures_are_one_sentence_and_exit_2(blocked_env, tmp_path) -> None:
    """bench without torch, a bad choice, a bad --threads: one line on stderr, exit code 2, no traceback."""
    cases = [
        (["bench", "--size", "tiny", "--out", str(tmp_path / "b")], "needs torch"),
        (["run", str(tmp_path), "x", "--engine", "gpu"], "'gpu' is not one of"),
        (["serve", str(tmp_path), "--log-level", "loud"], "'loud' is not one of"),
        (["run", str(tmp_path), "x", "--bogus"], "No such option: --bogus; see mbedge run --help."),
        (["run"], "Missing argument 'MODEL_DIR'; see mbedge run --help."),
        (["run", "--threads"], "Option '--threads' requires an argument; see mbedge run --help."),
    ]
    for args, message in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "modernbert_edge.cli", *args], capture_output=True, text=True, env=blocked_env
        )
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, (args, proc.stderr)
    assert not (tmp_path / "b").exists()  # nothing half-written


def test_version_names_the_package_and_the_cpu():
    from typer.testing import CliRunner

    from modernbert_edge import __version__
    from modernbert_edge.cli import app
    from modernbert_edge.cpu import cpu_info

    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith(f"mbedge {__version__} ") and cpu_info().line() in res.output


def test_cli_choices_are_the_library_choices() -> None:
    """The Enums of commands whose library imports onnx list exactly what the library accepts."""
    from modernbert_edge.export.builder import OPS
    from modernbert_edge.export.commands import Ops
    from modernbert_edge.quantize.commands import Mode
    from modernbert_edge.quantize.quantizer import MODES

    assert tuple(m.value for m in Mode) == MODES and tuple(o.value for o in Ops) == OPS
    from modernbert_edge.serve.commands import Route
    from modernbert_edge.serve.loadtest import ROUTES

    assert tuple(r.value for r in Route) == tuple(ROUTES)


def test_quantize_engine_auto_is_the_runtime_rule(exported_factory) -> None:
    """quantize --engine auto gates on the engine load() would pick for the folder written: never OpenVINO
    for dynamic int8 (com.microsoft ops); for int8-static of a portable export, choose_engine's answer."""
    from types import SimpleNamespace

    from modernbert_edge.quantize.commands import _gate_engine
    from modernbert_edge.runtime.engines import choose_engine

    portable = exported_factory("feature-extraction", ops="portable")
    assert _gate_engine("auto", "int8", portable) == "onnxruntime"
    assert _gate_engine("openvino", "int8", portable) == "openvino"  # given: passed on (the quantizer checks it)
    written = SimpleNamespace(manifest={"ops": "portable"}, precision="int8-static", task="feature-extraction")
    assert _gate_engine("auto", "int8-static", portable) == choose_engine(written, "auto")


def test_mbedge_alone_prints_the_help_and_exits_0(blocked_env) -> None:
    cmd = [sys.executable, "-m", "modernbert_edge.cli"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=blocked_env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "Usage: mbedge" in proc.stdout and "Commands" in proc.stdout


def test_usage_lines_name_arguments_in_capitals() -> None:
    """Arguments read as the docs write them (CHECKPOINT, OUT_DIR, MODEL_DIR, INPUT, OUTPUT), and each
    command's summary in `mbedge --help` is one line (its docstring's first paragraph)."""
    for name, command in COMMANDS.items():
        for param in command.params:
            if param.param_type_name == "argument":
                assert param.metavar and param.metavar == param.metavar.upper(), (name, param.name)
        summary = (command.help or "").split("\n\n")[0]
        assert "\n" not in summary.strip(), (name, summary)
