#!/usr/bin/env bash
# The dependency floors: a virtualenv with the oldest version of every core and export dependency that
# pyproject.toml allows (its ">=" bounds, installed with "=="), then `mbedge demo` (export, int8, every
# task on the bundled model) and `mbedge run` on the int8 folder. Measured 2026-12-05: ~1 min.
set -euo pipefail
cd "$(dirname "$0")/.."
floors=$(python3 - <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for dep in project["dependencies"] + project["optional-dependencies"]["export"]:
    name, low = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)>=([0-9.]+)", dep.replace(" ", "")).groups()
    print(f"{name}=={low}")
PY
)
rm -rf .venv-floors
python3 -m venv .venv-floors
.venv-floors/bin/pip install -q $floors
.venv-floors/bin/pip install -q --no-deps .
.venv-floors/bin/pip list 2>/dev/null | grep -iE "^(numpy|onnx|onnxruntime|tokenizers|typer) "
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! .venv-floors/bin/mbedge demo --out "$work/demo" >"$work/demo.log" 2>&1; then
  tail -20 "$work/demo.log"
  echo "floors: mbedge demo failed on the oldest allowed versions" >&2
  exit 1
fi
int8="$work/demo/fill-mask-int8"
.venv-floors/bin/mbedge run "$int8" "The [MASK] is sorted in place." --top-k 1 >/dev/null
.venv-floors/bin/mbedge info "$int8" | grep -E "^(precision|cpu) "
echo "floors: mbedge demo, run and info passed on the oldest allowed versions"
