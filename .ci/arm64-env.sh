#!/usr/bin/env bash
# Builds an ARM64 Python 3.11 under .emulation/arm64 that runs through qemu-aarch64 (.ci/emulators.sh):
#   root/  Debian 12's arm64 python3 and the libraries it needs (debootstrap --foreign, then dpkg -x of
#          every downloaded .deb: no second stage, no chroot, no binfmt)
#   site/  aarch64 wheels of onnxruntime, numpy, tokenizers and typer at the x86 venv's versions (and their
#          dependencies), through PYTHONPATH
#   python a wrapper: `.emulation/arm64/python -m modernbert_edge.cli info DIR`; QEMU_CPU picks the CPU
#          (default max: dot product + i8mm; cortex-a72: neither)
# tests/test_arm64.py installs the working tree's own (pure-Python) package next to site/ on each run, so
# the code under test is never a stale copy; this script installs one into project/ for use by hand.
# Cached: root/ is kept once built, site/ while the versions are the same. Fails loudly (non-zero, one
# line on stderr) when a download fails. Needs root (debootstrap) and the x86 venv (.venv, or $PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
EMU="${MBEDGE_EMULATION_DIR:-$PWD/.emulation}"
ARM="$EMU/arm64"
QEMU="$EMU/qemu/usr/bin/qemu-aarch64"
PY="${PYTHON:-$PWD/.venv/bin/python}"
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
fail() {
  echo "arm64-env: $*" >&2
  exit 1
}
# install_project DIR: this package (pure Python) into DIR, built from a private copy of its sources so
# that two builds (CI, a test, a person) never share the tree's build/ folder.
install_project() {
  local src
  src=$(mktemp -d)
  "$PY" - "$src" <<'PYEOF' || fail "copying this project's sources failed"
import shutil, sys, tomllib
from pathlib import Path
setup = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["setuptools"]
for name in ["pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", *setup["package-dir"].values()]:
    if Path(name).is_dir():
        shutil.copytree(name, Path(sys.argv[1]) / name, ignore=shutil.ignore_patterns("__pycache__"))
    elif Path(name).is_file():
        shutil.copy2(name, Path(sys.argv[1]) / name)
PYEOF
  rm -rf "$1"
  "$PY" -m pip install -q --no-deps --no-build-isolation --target "$1" "$src" >"$1.log" 2>&1 ||
    fail "pip install --target $1 of this project failed (see $1.log)"
  rm -rf "$src"
}
if [ "${1:-}" = "--project" ]; then # tests/test_arm64.py: the working tree's package, nothing else
  install_project "$2"
  exit 0
fi
[ -x "$QEMU" ] || fail "$QEMU is missing: run .ci/emulators.sh first"
mkdir -p "$ARM"

# 1. root/: an arm64 Debian 12 with python3.11, the files only (the emulator runs its binaries).
if [ ! -f "$ARM/root.done" ]; then
  DEBOOTSTRAP=(debootstrap)
  if ! command -v debootstrap >/dev/null; then # fetched like qemu, without touching the system's apt setup
    APT="$ARM/apt"
    mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $SUITE main" >"$APT/sources.list"
    opts=(-q -o "Dir::Etc::SourceList=$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o APT::Sandbox::User=root)
    apt-get "${opts[@]}" update >"$APT/update.log" 2>&1 || fail "apt-get update for Debian $SUITE failed (see $APT/update.log)"
    (cd "$APT" && apt-get "${opts[@]}" download debootstrap >"$APT/download.log" 2>&1) ||
      fail "downloading Debian $SUITE's debootstrap failed (see $APT/download.log)"
    rm -rf "$ARM/debootstrap" && dpkg -x "$APT"/debootstrap_*.deb "$ARM/debootstrap" && rm -rf "$APT"
    export DEBOOTSTRAP_DIR="$ARM/debootstrap/usr/share/debootstrap"
    DEBOOTSTRAP=("$ARM/debootstrap/usr/sbin/debootstrap")
  fi
  rm -rf "$ARM/root"
  "${DEBOOTSTRAP[@]}" --foreign --arch=arm64 --variant=minbase --include=python3 "$SUITE" "$ARM/root" "$MIRROR" \
    >"$ARM/debootstrap.log" 2>&1 || fail "debootstrap of arm64 $SUITE failed (see $ARM/debootstrap.log)"
  for deb in "$ARM"/root/var/cache/apt/archives/*.deb; do
    dpkg -x "$deb" "$ARM/root" || fail "dpkg -x $deb failed"
  done
  rm -f "$ARM"/root/var/cache/apt/archives/*.deb
  [ -x "$ARM/root/usr/bin/python3.11" ] || fail "debootstrap gave no usr/bin/python3.11 (see $ARM/debootstrap.log)"
  touch "$ARM/root.done"
fi

# 2. site/: the runtime's dependencies as aarch64 wheels, at the x86 venv's versions.
[ -x "$PY" ] || fail "$PY is missing: build the x86 venv first (its package versions are the ones installed)"
pins=$("$PY" -c 'from importlib.metadata import version as v
print(" ".join(f"{p}=={v(p)}" for p in ("onnxruntime", "numpy", "tokenizers", "typer")))')
if [ "$(cat "$ARM/site.pins" 2>/dev/null)" != "$pins" ]; then
  rm -rf "$ARM/site" "$ARM/site.pins"
  # shellcheck disable=SC2086  # $pins is a list of requirements
  "$PY" -m pip install -q --target "$ARM/site" --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
    --python-version 3.11 --implementation cp --only-binary=:all: $pins >"$ARM/pip.log" 2>&1 ||
    fail "pip install of aarch64 wheels ($pins) failed (see $ARM/pip.log)"
  echo "$pins" >"$ARM/site.pins"
fi

# 3. python: the wrapper; project/: this package, for use by hand (tests/test_arm64.py installs the
#    working tree's own with --project DIR).
cat >"$ARM/python" <<EOF
#!/bin/sh
# ARM64 Python 3.11 under qemu-user (.ci/arm64-env.sh); QEMU_CPU=cortex-a72 for a CPU without dot product.
export PYTHONPATH="\${MBEDGE_ARM64_PATH:-$ARM/project}:$ARM/site"
exec "$QEMU" -cpu "\${QEMU_CPU:-max}" -L "$ARM/root" "$ARM/root/usr/bin/python3.11" "\$@"
EOF
chmod +x "$ARM/python"
install_project "$ARM/project"
"$ARM/python" -c 'import numpy, onnxruntime, platform; print("arm64-env:", platform.machine(),
"python", platform.python_version(), "onnxruntime", onnxruntime.__version__, "numpy", numpy.__version__)'
