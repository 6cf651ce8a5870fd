"""Bad input to `mbedge export`: one clear sentence, exit code 2, nothing half-written."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modernbert_edge.cli import app

runner = CliRunner()


def run_export(*args: str):  # noqa: ANN201
    return runner.invoke(app, ["export", *map(str, args), "--no-validate"])


def copy_ckpt(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_config(ckpt: Path, **changes) -> None:
    path = ckpt / "config.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def rewrite_safetensors(path: Path, edit, extra: bytes = b"") -> None:  # noqa: ANN001
    """Edit the header of a safetensors file (rename or reshape tensors) in place; `extra` is appended to its data."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :] + extra)


def read_header(path: Path) -> dict:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])


def assert_user_error(result, *fragments: str) -> None:  # noqa: ANN001
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


@pytest.fixture
def ckpt(checkpoint_factory, tmp_path) -> Path:
    return copy_ckpt(checkpoint_factory("fill-mask"), tmp_path / "ckpt")


def test_missing_folder(tmp_path):
    assert_user_error(run_export(tmp_path / "nope", tmp_path / "out"), "does not exist")


def test_missing_config(ckpt, tmp_path):
    (ckpt / "config.json").unlink()
    assert_user_error(run_export(ckpt, tmp_path / "out"), "config.json")


def test_unreadable_config(ckpt, tmp_path):
    (ckpt / "config.json").write_text("{not json")
    assert_user_error(run_export(ckpt, tmp_path / "out"), "could not be read as JSON")


def test_not_modernbert(ckpt, tmp_path):
    rewrite_config(ckpt, model_type="bert")
    assert_user_error(run_export(ckpt, tmp_path / "out"), "not a ModernBERT config")


@pytest.mark.parametrize(
    "field,value",
    [
        ("hidden_activation", "mish"),
        ("classifier_pooling", "max"),
        ("layer_types", ["full_attention", "chunked_attention", "full_attention", "full_attention"]),
        ("rope_parameters", {"full_attention": {"rope_type": "yarn", "rope_theta": 1.0}}),
    ],
)
def test_unsupported_values_name_the_field(ckpt, tmp_path, field, value):
    rewrite_config(ckpt, **{field: value})
    result = run_export(ckpt, tmp_path / "out")
    assert_user_error(result, "not supported")
    assert field.split("_")[0] in result.output


def test_missing_weights_file(ckpt, tmp_path):
    (ckpt / "model.safetensors").unlink()
    assert_user_error(run_export(ckpt, tmp_path / "out"), "no model.safetensors")


def test_truncated_weights_file(ckpt, tmp_path):
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    assert_user_error(run_export(ckpt, tmp_path / "out"), "model.safetensors")


def test_missing_tensor_is_named(ckpt, tmp_path):
    def drop(header):  # noqa: ANN001
        header["model.layers.1.mlp.Wo.weight_renamed"] = header.pop("model.layers.1.mlp.Wo.weight")

    rewrite_safetensors(ckpt / "model.safetensors", drop)
    assert_user_error(run_export(ckpt, tmp_path / "out"), "model.layers.1.mlp.Wo.weight")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary left


def test_extra_tensor_is_named(ckpt, tmp_path):
    path = ckpt / "model.safetensors"
    end = max(v["data_offsets"][1] for k, v in read_header(path).items() if k != "__metadata__")

    def add(header):  # noqa: ANN001
        header["model.layers.0.attn.extra.weight"] = {"dtype": "F32", "shape": [4], "data_offsets": [end, end + 16]}

    rewrite_safetensors(path, add, extra=bytes(16))
    assert_user_error(run_export(ckpt, tmp_path / "out"), "does not use", "model.layers.0.attn.extra.weight")


def test_shape_mismatch(ckpt, tmp_path):
    rewrite_config(ckpt, intermediate_size=80)
    assert_user_error(run_export(ckpt, tmp_path / "out"), "has shape", "expected")


def test_out_dir_exists_is_kept(ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_user_error(run_export(ckpt, out), "already exists", "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"
    overwrite = ["export", str(ckpt), str(out), "--overwrite", "--no-validate"]
    assert_user_error(runner.invoke(app, overwrite), "not a model folder")  # not a folder mbedge wrote
    assert (out / "keep.txt").read_text() == "mine"
    (out / "manifest.json").write_text("{}")  # a model folder (an old export's): --overwrite replaces it
    result = runner.invoke(app, overwrite)
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists() and (out / "model.onnx").is_file()


def test_wrong_task_for_checkpoint(checkpoint_factory, tmp_path):
    ckpt = checkpoint_factory("feature-extraction")
    assert_user_error(run_export(ckpt, tmp_path / "out", "--task", "fill-mask"), "needs a ModernBertForMaskedLM")
    assert_user_error(run_export(ckpt, tmp_path / "out", "--task", "summarize"), "unknown task")
    masked_lm = checkpoint_factory("fill-mask")  # a head, but not the one --task names: which one it is
    result = run_export(masked_lm, tmp_path / "out", "--task", "question-answering")
    assert_user_error(result, "is a ModernBertForMaskedLM (fill-mask), with no question-answering head", "drop --task")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture(ckpt, tmp_path):
    rewrite_config(ckpt, architectures=["ModernBertForMultipleChoice"])
    assert_user_error(run_export(ckpt, tmp_path / "out"), "pass --task")
