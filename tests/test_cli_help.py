"""`mbedge --help` and each command's --help work where onnxruntime (and torch, onnx, ...) cannot be
imported: the CLI imports what a command needs only when the command runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import typer

from modernbert_edge.cli import app

BLOCKED = ("onnxruntime", "torch", "transformers", "optimum", "onnx")

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

    try:
        import onnxruntime
        blocked = False
    except ImportError:
        blocked = True
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
    assert len(COMMANDS) >= 8
    for name in COMMANDS:
        assert name in proc.stdout, name


def test_each_command_help_without_onnxruntime(blocked_env) -> None:
    proc = subprocess.run([sys.executable, "-c", HELP_SCRIPT], capture_output=True, text=True, env=blocked_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["blocked"] and report["heavy"] == []  # the blocker works, and nothing got past it
    assert sorted(report["pages"]) == sorted(COMMANDS)
    for name, (code, page) in report["pages"].items():
        assert code == 0 and "Usage: mbedge " + name in page, name
        for option in (opt for param in COMMANDS[name].params for opt in param.opts if opt.startswith("--")):
            assert option in page, (name, option)


def test_version_names_the_package_and_the_cpu():
    from typer.testing import CliRunner

    from modernbert_edge import __version__
    from modernbert_edge.cli import app
    from modernbert_edge.cpu import cpu_info

    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith(f"mbedge {__version__} ") and cpu_info().line() in res.output
