#!/usr/bin/env bash
# Builds .venv-interop: optimum and sentence-transformers' ONNX backend, which need transformers < 4.58,
# next to this project (editable), with pytest and hypothesis (tests/conftest.py loads it). tests/test_interop.py
# runs tests/interop inside it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-interop
.venv-interop/bin/pip install -q torch==2.13.0 "transformers<4.58" "optimum-onnx[onnxruntime]" sentence-transformers pytest hypothesis -e .
