"""The portable graph (`--ops portable`, standard ONNX ops only): parity with PyTorch on ONNX Runtime
for every task, its structure, and parity on OpenVINO when openvino is installed."""

from __future__ import annotations

import dataclasses
import json
from unittest import mock

import numpy as np
import onnx
import pytest
from test_export import (
    LENGTHS,
    assert_close_on_valid,
    assert_rows_alone_match,
    onnx_outputs,
    padded_batch,
    torch_outputs,
)

from modernbert_edge.cpu import cpu_info, kernel_class
from modernbert_edge.errors import UserError
from modernbert_edge.export.builder import MS_DOMAIN, node_domains
from modernbert_edge.export.tasks import TASKS
from modernbert_edge.manifest import read_manifest
from modernbert_edge.runtime.engines import openvino_installed

# OpenVINO's default precision on CPUs with AVX512-BF16 is bf16 (8 mantissa bits, ~4e-3 relative per
# rounding). Measured on these tiny models (outputs of magnitude 1.7-3.6): 1.8e-4 (hidden states) to
# 1.9e-2 (head logits) from PyTorch fp32. The tolerance is the precision's, not tuned to pass: a wrong
# mask or rotary moves outputs by ~1.
BF16_ATOL = 5e-2


def vocab_of(model_dir) -> int:
    return json.loads((model_dir / "config.json").read_text())["vocab_size"]


needs_openvino = pytest.mark.skipif(not openvino_installed(), reason="the openvino extra is not installed")


def openvino_outputs(model_dir, ids, mask, precision: str) -> dict[str, np.ndarray]:
    from modernbert_edge.runtime.engines import OpenVinoSession

    session = OpenVinoSession(model_dir / "model.onnx", config={"INFERENCE_PRECISION_HINT": precision})
    return session.run(ids, mask)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_matches_pytorch(task, exported_factory, checkpoint_factory):
    """On onnxruntime: lengths on both sides of the local window and of a chunk, padded together and
    alone, to 1e-4. On OpenVINO (when installed; fill-mask aside, see runtime/engines.py): the same
    padded batch at f32 to 1e-4 and at bf16 to BF16_ATOL."""
    out = exported_factory(task, ops="portable", max_position_embeddings=1024)
    assert read_manifest(out)["validation"]["status"] == "passed"
    ids, mask = padded_batch(LENGTHS, vocab_of(out))
    ref = torch_outputs(checkpoint_factory(task, max_position_embeddings=1024), task, ids, mask)
    ours = onnx_outputs(out, ids, mask)
    assert_close_on_valid(ours, ref, mask)
    assert_rows_alone_match(out, ids, mask, ours)
    if openvino_installed() and task != "fill-mask":
        assert_close_on_valid(openvino_outputs(out, ids, mask, "f32"), ref, mask)
        assert_close_on_valid(openvino_outputs(out, ids, mask, "bf16"), ref, mask, atol=BF16_ATOL)


def test_structure_has_standard_ops_only(exported_factory):
    out = exported_factory("fill-mask", ops="portable", num_hidden_layers=5)
    model = onnx.load(str(out / "model.onnx"))
    assert MS_DOMAIN not in node_domains(model.graph)
    assert {o.domain for o in model.opset_import} == {""} and model.opset_import[0].version == 23
    ops = [n.op_type for n in model.graph.node]
    assert "If" not in ops  # see export/attention.py: OpenVINO miscomputes them
    assert ops.count("Attention") == 5 and ops.count("RotaryEmbedding") == 5
    assert "Softmax" not in ops and "Erf" not in ops
    manifest = read_manifest(out)
    assert manifest["ops"] == "portable" and manifest["opset"] == 23
    assert manifest["fused_ops"] == {"Attention": 5, "RotaryEmbedding": 5, "Gelu": 6, "LayerNormalization": 12}
    # The same structure as the contrib graph: the same node names for everything but attention.
    contrib = onnx.load(str(exported_factory("fill-mask", num_hidden_layers=5) / "model.onnx"))
    projections = {n.name for n in contrib.graph.node if n.op_type == "MatMul"}
    assert projections == {n.name for n in model.graph.node if n.op_type == "MatMul"}


def test_int8_static_keeps_the_portable_graph_standard(exported_factory, tmp_path):
    """And its fidelity gate runs on the engine that will run it (OpenVINO, when installed)."""
    from modernbert_edge.quantize.quantizer import quantize

    out = exported_factory("feature-extraction", ops="portable")
    engine = "openvino" if openvino_installed() else "onnxruntime"
    manifest = quantize(out, tmp_path / "q", mode="int8-static", engine=engine, log=lambda _m: None)
    assert manifest["fidelity"]["engine"] == engine and manifest["fidelity"]["gate"]["status"] == "passed"
    model = onnx.load(str(tmp_path / "q" / "model.onnx"))
    assert MS_DOMAIN not in node_domains(model.graph)
    assert [o.domain for o in model.opset_import] == [""]
    assert "QuantizeLinear" in [n.op_type for n in model.graph.node]
    with pytest.raises(UserError, match="int8-static of a folder exported with --ops portable"):
        quantize(out, tmp_path / "q8", mode="int8", engine="openvino", log=lambda _m: None)
    assert not (tmp_path / "q8").exists()
    if openvino_installed():  # auto runs an int8-static portable folder on OpenVINO (runtime/engines.py AUTO_RULE)
        import modernbert_edge as mbe
        from modernbert_edge.runtime import engines

        vnni = {"avx2": True, "avx512_vnni": True}
        avx2 = {"avx2": True, "avx512_vnni": False, "avx_vnni": False, "amx_int8": False}
        for features, expected in ((vnni, "openvino"), (avx2, "onnxruntime")):  # the rule per CPU class
            fake = dataclasses.replace(cpu_info(), features=features, kernel_class=kernel_class("x86_64", features))
            with mock.patch.object(engines, "cpu_info", lambda fake=fake: fake):
                model = mbe.load(tmp_path / "q")
                assert model.engine == expected and "auto:" in model.describe()["engine"], features
        model = mbe.load(tmp_path / "q", engine="openvino")
        texts = ["a short text", "and a longer one, with a few more words in it"]
        same_file_on_ort = mbe.load(tmp_path / "q", engine="onnxruntime").embed(texts)
        assert (np.sum(model.embed(texts) * same_file_on_ort, axis=1) > 0.999).all()  # bf16 between int8 matmuls


@needs_openvino
def test_openvino_matches_pytorch_unpadded(exported_factory, checkpoint_factory):
    """Batches with no padding, short (one chunk) and long (several), at f32 and bf16."""
    out = exported_factory("feature-extraction", ops="portable", max_position_embeddings=1024)
    ckpt = checkpoint_factory("feature-extraction", max_position_embeddings=1024)
    for lengths in ([300], [7, 7]):
        ids, mask = padded_batch(lengths, vocab_of(out), seed=len(lengths))
        ref = torch_outputs(ckpt, "feature-extraction", ids, mask)
        assert_close_on_valid(openvino_outputs(out, ids, mask, "f32"), ref, mask)
        assert_close_on_valid(openvino_outputs(out, ids, mask, "bf16"), ref, mask, atol=BF16_ATOL)


@needs_openvino
def test_both_engines_implement_the_session_protocol(exported_factory):
    from modernbert_edge.contract import INPUTS
    from modernbert_edge.runtime.engines import OpenVinoSession
    from modernbert_edge.runtime.session import OrtSession, Session

    path = exported_factory("feature-extraction", ops="portable") / "model.onnx"
    ids = np.array([[1, 10, 11, 12, 2]], dtype=np.int64)
    outputs = []
    for session in (OrtSession(path), OpenVinoSession(path)):
        assert isinstance(session, Session)
        assert sorted(session.input_names) == sorted(INPUTS) and session.output_names == ["last_hidden_state"]
        assert session.mark is None and session.output_shapes["last_hidden_state"][-1] == 64
        outputs.append(session.run(ids, np.ones_like(ids)))
        assert list(outputs[-1]) == session.output_names
    np.testing.assert_allclose(outputs[0]["last_hidden_state"], outputs[1]["last_hidden_state"], atol=1e-4)


@needs_openvino
def test_engine_choice(exported_factory):
    import modernbert_edge as mbe

    portable = exported_factory("feature-extraction", ops="portable")
    contrib = exported_factory("feature-extraction")
    assert mbe.load(portable).engine == "onnxruntime"  # fp32: OpenVINO at f32 measured no faster
    assert mbe.load(contrib).engine == "onnxruntime"
    model = mbe.load(portable, engine="openvino")
    assert model.engine == "openvino" and model.describe()["engine"].startswith("openvino (CPU plugin at f32")
    texts = ["a short text", "and a longer one, with a few more words in it"]
    np.testing.assert_allclose(model.embed(texts), mbe.load(portable).embed(texts), atol=1e-5)
    with pytest.raises(UserError, match="--ops portable"):
        mbe.load(contrib, engine="openvino")
    with pytest.raises(UserError, match="engine must be one of"):
        mbe.load(portable, engine="tensorrt")


def test_openvino_on_a_folder_it_can_never_run_says_why_not_install(exported_factory, monkeypatch):
    """A contrib (com.microsoft) folder cannot run on OpenVINO installed or not: the message says so
    instead of asking to install openvino."""
    import modernbert_edge as mbe
    from modernbert_edge.runtime import engines

    monkeypatch.setattr(engines, "openvino_installed", lambda: False)
    with pytest.raises(UserError, match="cannot run on OpenVINO: it was exported with ONNX Runtime's com.microsoft"):
        mbe.load(exported_factory("feature-extraction"), engine="openvino")
