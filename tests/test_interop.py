"""Runs tests/interop in .venv-interop (optimum and sentence-transformers need transformers < 4.58;
.ci/interop-venv.sh builds it): this checkout's, or in a git worktree the main checkout's. The venv
installs the project editable from wherever it was built, so the run imports this checkout's code
(a sitecustomize on PYTHONPATH maps the package folders here, as pyproject's package-dir does).
Skipped, with the reason, where no venv exists, except in CI."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(".venv-interop") / "bin" / "python"
# Imported first by every Python started with it on PYTHONPATH: the package's folders in this checkout.
SITECUSTOMIZE = """\
import importlib.util, sys
ROOT, FOLDERS = {root!r}, {folders!r}
class _ThisCheckout:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name not in FOLDERS:
            return None
        where = f"{{ROOT}}/{{FOLDERS[name]}}"
        init = f"{{where}}/__init__.py"
        return importlib.util.spec_from_file_location(name, init, submodule_search_locations=[where])
sys.meta_path.insert(0, _ThisCheckout)
"""


def interop_python() -> Path | None:
    """.venv-interop's python in this checkout, else in the main checkout of this git worktree."""
    roots = [ROOT]
    common = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--path-format=absolute", "--git-common-dir"],
                            capture_output=True, text=True)  # fmt: skip
    if common.returncode == 0 and common.stdout.strip():
        roots.append(Path(common.stdout.strip()).parent)
    return next((root / VENV for root in roots if (root / VENV).is_file()), None)


def this_checkout(site: Path) -> dict[str, str]:
    """os.environ with `site` (SITECUSTOMIZE written there) first on PYTHONPATH."""
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(root=str(ROOT), folders=folders))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)}


def test_interop_suite_passes(tmp_path) -> None:
    python = interop_python()
    if python is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{ROOT / VENV} is missing: CI must build it with .ci/interop-venv.sh")
        pytest.skip("no .venv-interop: build it with `bash .ci/interop-venv.sh` to run the interop tests")
    proc = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "interop")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**this_checkout(tmp_path), "MBEDGE_INTEROP": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_interop_runs_this_checkouts_code(tmp_path) -> None:
    python = interop_python()
    if python is None:
        pytest.skip("no .venv-interop")
    code = "import modernbert_edge.runtime.session as s, modernbert_edge.contract as c; print(s.__file__, c.__file__)"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True,
                         env=this_checkout(tmp_path / "site")).stdout.split()  # fmt: skip
    assert out == [str(ROOT / "runtime" / "session.py"), str(ROOT / "modernbert_edge" / "contract.py")]
