"""sentence-transformers metadata at export and in the runtime, rerank(), and ONNX folders made
elsewhere, in the main environment (the comparisons with sentence-transformers and optimum
themselves are in tests/interop)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from modernbert_edge.cli import app
from modernbert_edge.errors import UserError
from modernbert_edge.export.exporter import export
from modernbert_edge.runtime import InputError, load
from modernbert_edge.runtime.numerics import pool

runner = CliRunner()
quiet = {"log": lambda _m: None}
TEXTS = ["alice works at acme", "the quick brown fox jumps", "bob"]


def _sentence_checkpoint(src, dst, pooling: dict, prompts: dict | None = None, dense: int = 0):
    """A copy of a feature-extraction checkpoint with sentence-transformers modules (legacy pooling keys)."""
    from safetensors.numpy import save_file

    shutil.copytree(src, dst)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    (dst / "1_Pooling").mkdir()
    (dst / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 64, **pooling}))
    if dense:
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
        (dst / "2_Dense").mkdir()
        config = {"in_features": 64, "out_features": dense, "bias": True}
        config["activation_function"] = "torch.nn.modules.activation.Tanh"
        (dst / "2_Dense" / "config.json").write_text(json.dumps(config))
        rng = np.random.default_rng(0)
        tensors = {"linear.weight": rng.normal(size=(dense, 64)).astype(np.float32) * 0.1}
        tensors["linear.bias"] = rng.normal(size=(dense,)).astype(np.float32)
        save_file(tensors, str(dst / "2_Dense" / "model.safetensors"))
    modules.append({"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"})
    (dst / "modules.json").write_text(json.dumps(modules))
    st = {"prompts": prompts or {}, "default_prompt_name": None, "similarity_fn_name": "dot"}
    (dst / "config_sentence_transformers.json").write_text(json.dumps(st))
    (dst / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    return dst


def test_export_carries_the_modules_and_embed_runs_them(checkpoint_factory, tmp_path) -> None:
    pooling = {"pooling_mode_mean_tokens": True, "include_prompt": False}
    src = _sentence_checkpoint(checkpoint_factory("feature-extraction"), tmp_path / "st", pooling, {"q": "query: "}, 16)
    manifest = export(str(src), tmp_path / "out", **quiet)
    out = tmp_path / "out"
    assert manifest["sentence"]["modules"][1] == {
        "type": "Pooling",
        "path": "1_Pooling",
        "modes": ["mean"],
        "include_prompt": False,
    }
    assert manifest["sentence"]["dimension"] == 16 and manifest["sentence"]["max_seq_length"] == 32
    for name in ("modules.json", "1_Pooling/config.json", "2_Dense/model.safetensors", "sentence_bert_config.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "tokenizer_config.json").read_text())["model_input_names"] == [
        "input_ids",
        "attention_mask",
    ]
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert graph.producer_name == "modernbert-edge" and graph.producer_version

    model = load(out)
    assert model.max_length == 32
    from safetensors.numpy import load_file

    dense = load_file(str(out / "2_Dense" / "model.safetensors"))
    prompt = "query: "
    enc = model.tokenizer.encode([prompt + t for t in TEXTS])
    n_prompt = len(model.tokenizer.encode([prompt])[0].ids) - 1  # [CLS] + prompt tokens
    for text, e, got in zip(TEXTS, enc, model.embed(TEXTS, prompt_name="q"), strict=True):
        hidden = model.run(np.array([e.ids]))["last_hidden_state"][0]
        want = np.tanh(hidden[n_prompt:].mean(0) @ dense["linear.weight"].T + dense["linear.bias"])
        np.testing.assert_allclose(got, want / np.linalg.norm(want), atol=1e-5, err_msg=text)
    short = model.embed(TEXTS, prompt="query: ", dim=8)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-6)
    a = model.embed(TEXTS)
    np.testing.assert_allclose(model.similarity(a, a), a @ a.T, atol=1e-6)  # similarity_fn_name: dot
    with pytest.raises(UserError, match="no prompt named 'x'"):
        model.embed(TEXTS, prompt_name="x")
    result = runner.invoke(app, ["run", str(out), *TEXTS, "--prompt-name", "q"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    np.testing.assert_allclose([x["embedding"] for x in lines], model.embed(TEXTS, prompt_name="q"), atol=1e-6)


def test_unknown_module_is_an_export_error(checkpoint_factory, tmp_path) -> None:
    src = _sentence_checkpoint(checkpoint_factory("feature-extraction"), tmp_path / "st", {"pooling_mode": "cls"})
    modules = json.loads((src / "modules.json").read_text())
    modules.append({"idx": 4, "name": "4", "path": "4_LSTM", "type": "sentence_transformers.models.LSTM"})
    (src / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UserError, match="sentence_transformers.models.LSTM"):
        export(str(src), tmp_path / "out", **quiet)
    assert not (tmp_path / "out").exists()


def test_pooling_modes() -> None:
    h = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    m = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    np.testing.assert_allclose(pool(h, m, "mean")[1], h[1, :2].mean(0))
    np.testing.assert_allclose(pool(h, m, "max")[0], h[0, 2])
    np.testing.assert_allclose(pool(h, m, "lasttoken")[1], h[1, 1])
    np.testing.assert_allclose(pool(h, m, "weightedmean")[1], (h[1, 0] + 2 * h[1, 1]) / 3)
    np.testing.assert_allclose(pool(h, m, "mean_sqrt_len_tokens")[0], h[0, :3].sum(0) / np.sqrt(3))
    np.testing.assert_allclose(pool(h, np.array([[0, 1, 1, 0]] * 2), "cls"), h[:, 1])  # first kept token


def test_rerank_scores_and_run_jsonl(checkpoint_factory, tmp_path) -> None:
    export(str(checkpoint_factory("text-classification", num_labels=1)), tmp_path / "ce", **quiet)
    model = load(tmp_path / "ce")
    docs = ["alice works at acme", "bob", "the lazy dog sleeps"]
    ranking = model.rerank("who works at acme", docs)
    pairs = model.tokenizer.encode_pairs([("who works at acme", d) for d in docs])
    logits = np.array([model.run(np.array([p.ids]))["logits"][0, 0] for p in pairs])
    scores = 1 / (1 + np.exp(-logits))
    assert [r["index"] for r in ranking] == list(np.argsort(-scores))
    np.testing.assert_allclose([r["score"] for r in ranking], np.sort(scores)[::-1], atol=1e-6)
    lines = json.dumps({"query": "who works at acme", "documents": docs}) + "\n" + json.dumps({"query": "q"}) + "\n"
    result = runner.invoke(app, ["run", str(tmp_path / "ce"), "--task", "rerank", "--input", "-"], input=lines)
    assert result.exit_code == 2
    first = json.loads(result.stdout.splitlines()[0])
    assert [r["index"] for r in first["ranking"]] == [r["index"] for r in ranking]
    assert "documents" in json.loads(result.stdout.splitlines()[1])["error"]
    plain = runner.invoke(app, ["run", str(tmp_path / "ce"), "--input", "-"], input=lines)  # without --task
    assert plain.exit_code == 2 and "--task rerank" in json.loads(plain.stdout.splitlines()[0])["error"]
    # Documents that are not a list of texts are one sentence, never a ranking of a string's characters.
    for documents in ("abc", None, 3, {"a": 1}):
        with pytest.raises(InputError, match="must be a query and a list of documents"):
            model.rerank("q", documents)
    assert len(model.rerank("q", (d for d in docs))) == 3  # any iterable of texts
    with pytest.raises(InputError, match=r"has an empty document \(document 1\)"):
        model.rerank("q", ["ok", ""])


def test_foreign_folder_loads_as_its_outputs_say(exported_factory, tmp_path) -> None:
    """A folder without manifest.json, Hub layout (onnx/), with a token_type_ids input added."""
    ours = exported_factory("text-classification")
    hub = tmp_path / "hub"
    (hub / "onnx").mkdir(parents=True)
    for f in ours.iterdir():
        if f.suffix == ".json" and f.name != "manifest.json":
            shutil.copy2(f, hub / f.name)
    graph = onnx.load(str(ours / "model.onnx"))
    graph.graph.input.append(onnx.helper.make_tensor_value_info("token_type_ids", onnx.TensorProto.INT64, ["b", "s"]))
    onnx.save(graph, str(hub / "onnx" / "model.onnx"))
    shutil.copy2(hub / "onnx" / "model.onnx", hub / "onnx" / "model_quantized.onnx")
    foreign = load(hub)
    assert foreign.task == "text-classification" and foreign.info.model_path.name == "model.onnx"
    assert foreign.classify(TEXTS) == load(ours).classify(TEXTS)
    assert load(hub, file="model_quantized.onnx").info.precision == "int8"
    assert runner.invoke(app, ["info", str(hub), "--file", "onnx/model_quantized.onnx"]).exit_code == 0
    with pytest.raises(UserError, match="no model file 'nope.onnx'"):
        load(hub, file="nope.onnx")
    result = runner.invoke(app, ["quantize", str(hub), str(tmp_path / "q")])  # onnx/model.onnx, the default
    assert result.exit_code == 0 and "label agreement" in result.output, result.output
    int8 = load(tmp_path / "q")
    assert int8.info.precision == "int8" and int8.info.id2label == foreign.info.id2label
    assert len(int8.classify(TEXTS)) == len(TEXTS)
    result = runner.invoke(app, ["compare", str(ours), str(tmp_path / "q")])
    assert result.exit_code == 0 and "largest logit difference" in result.output, result.output
    (hub / "onnx" / "model.onnx").unlink()
    with pytest.raises(UserError, match="several model files|pick one"):
        shutil.copy2(hub / "onnx" / "model_quantized.onnx", hub / "onnx" / "model_fp16.onnx")
        load(hub)
    odd = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["input_ids"], ["pooled"])],
            "g",
            [
                onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT64, ["b", "s"])
                for n in ("input_ids", "attention_mask")
            ],
            [onnx.helper.make_tensor_value_info("pooled", onnx.TensorProto.INT64, ["b", "s"])],
        )
    )
    shutil.rmtree(hub / "onnx")
    onnx.save(odd, str(hub / "model.onnx"))
    with pytest.raises(UserError, match="fit no task"):
        load(hub)
