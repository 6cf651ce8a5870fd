#!/usr/bin/env bash
# Every test, as CI runs it: builds what the tests need, then lint and pytest. Arguments go to pytest
# (`bash scripts/test.sh tests/test_runtime.py -x`). Each step reuses what an earlier run built:
#   .venv-interop  optimum + sentence-transformers, which need transformers < 4.58 (tests/test_interop.py; ~5 min once)
#   .emulation     qemu-user 10: the AVX2 int8 kernel class and ARM64, emulated (tests/test_kernels.py, test_arm64.py)
#   .venv          this project with the `dev` extra (torch 2.13 CPU, transformers, ray, the server, the clients)
#   .emulation/arm64  an emulated arm64 Python with this venv's onnxruntime, numpy and tokenizers (~1 min once)
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/interop-venv.sh
bash .ci/emulators.sh
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q -e ".[dev]"
bash .ci/arm64-env.sh  # reads the versions installed in .venv, so it runs after the install
ruff check .
ruff format --check .
pytest --durations=15 "$@"
