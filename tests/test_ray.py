"""modernbert_edge.ray on a local Ray instance (one per module: Ray takes seconds to start).

`mbedge batch` output equals the in-process runtime row by row; a worker killed mid-job and a rerun
after an interrupted job still leave every row exactly once; bad rows become error rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import modernbert_edge  # noqa: E402
from modernbert_edge.errors import UserError  # noqa: E402
from modernbert_edge.ray import batch as batch_module  # noqa: E402
from modernbert_edge.ray import classify, embed, plan_workers, run_batch  # noqa: E402

WORDS = "the a cat dog runs over quickly lazy river bank money loan paris france capital city of".split()
ROWS = 2400
SHARD = 400


def _texts(n: int) -> list:
    rng = np.random.default_rng(0)
    texts: list = [" ".join(rng.choice(WORDS, rng.integers(1, 48))) for _ in range(n)]
    for i in range(3, n, 211):
        texts[i] = ""  # empty
    for i in range(7, n, 307):
        texts[i] = None  # null
    return texts


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The same texts as Parquet (ids 1000 + i) and as JSONL (with lines that are not JSON, or not text)."""
    root = tmp_path_factory.mktemp("corpus")
    texts = _texts(ROWS)
    ids = [1000 + i for i in range(ROWS)]
    pq.write_table(
        pa.table({"id": ids, "text": pa.array(texts, pa.string())}), root / "docs.parquet", row_group_size=700
    )
    lines = []
    for i, (k, t) in enumerate(zip(ids, texts, strict=True)):
        if i % 401 == 11:
            lines.append("{not json")
        elif i % 503 == 13:
            lines.append(json.dumps({"id": k, "text": 42}))
        else:
            lines.append(json.dumps({"id": k, "text": t}))
    (root / "docs.jsonl").write_text("\n".join(lines) + "\n")
    return root, texts


@pytest.fixture(scope="module")
def embedder(exported_factory):
    return exported_factory("feature-extraction")


@pytest.fixture(scope="module")
def classifier(exported_factory):
    return exported_factory("text-classification")


def _read(out) -> dict:
    table = pq.read_table(out)
    order = np.argsort(np.asarray(table.column("row")))
    return table.take(order).to_pydict()


def _good(texts: list) -> list[int]:
    return [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]


def test_parquet_embeddings_equal_in_process(local_ray, corpus, embedder, tmp_path):
    root, texts = corpus
    summary = run_batch(embedder, root / "docs.parquet", tmp_path, workers=2, threads_per_worker=1, shard_rows=SHARD)
    got = _read(tmp_path)
    assert got["row"] == list(range(ROWS))  # every row exactly once, in order
    assert got["id"] == [1000 + i for i in range(ROWS)]
    good = _good(texts)
    expected = modernbert_edge.load(embedder).embed([texts[i] for i in good])
    np.testing.assert_allclose(np.array([got["embedding"][i] for i in good]), expected, atol=1e-6, rtol=0)
    bad = sorted(set(range(ROWS)) - set(good))
    assert bad and all(got["embedding"][i] is None for i in bad)
    assert [got["error"][i] for i in bad] == [
        "text is empty (or only whitespace)." if texts[i] == "" else "text is not a string (got NoneType)." for i in bad
    ]
    assert all(got["error"][i] is None for i in good)
    assert summary["rows"] == ROWS and summary["failed"] == len(bad) and summary["shards_run"] == ROWS // SHARD
    assert summary["tokens"] > ROWS and len(summary["workers"]) == 2
    assert pq.read_schema(tmp_path / sorted(p.name for p in tmp_path.glob("*.parquet"))[0]).field(
        "embedding"
    ).type == pa.list_(pa.float32(), modernbert_edge.load(embedder).info.hidden_size)


def test_jsonl_labels_equal_in_process_and_bad_lines_are_error_rows(local_ray, corpus, classifier, tmp_path):
    root, texts = corpus
    summary = run_batch(classifier, root / "docs.jsonl", tmp_path, shard_rows=SHARD)
    got = _read(tmp_path)
    assert got["row"] == list(range(ROWS))
    model = modernbert_edge.load(classifier)
    for i in range(ROWS):
        if i % 401 == 11:
            assert got["error"][i].startswith(f"line {i + 1} is not valid JSON") and got["id"][i] is None
        elif i % 503 == 13:
            assert got["error"][i] == "text is not a string (got int)." and got["id"][i] == 1000 + i
    good = [i for i in _good(texts) if i % 401 != 11 and i % 503 != 13]
    expected = model.classify([texts[i] for i in good], top_k=None)
    assert [got["label"][i] for i in good] == [r[0]["label"] for r in expected]
    np.testing.assert_allclose([got["score"][i] for i in good], [r[0]["score"] for r in expected], atol=1e-6)
    assert summary["failed"] == ROWS - len(good) == sum(e is not None for e in got["error"])


class CrashingWorker(batch_module.ShardWorker):
    """Dies (the whole process) the first time it reaches the shard starting at row 2 * SHARD."""

    marker = ""

    def run_shard(self, shard):  # noqa: ANN001, ANN201
        if shard.start == 2 * SHARD and os.path.exists(self.marker):
            os.remove(self.marker)
            os._exit(1)
        return super().run_shard(shard)


def test_killed_worker_every_row_exactly_once(local_ray, corpus, embedder, tmp_path, monkeypatch):
    root, texts = corpus
    marker = tmp_path / "crash-once"
    marker.write_text("")
    CrashingWorker.marker = str(marker)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(batch_module, "ShardWorker", CrashingWorker)
    out = tmp_path / "out"
    summary = run_batch(embedder, root / "docs.parquet", out, workers=1, threads_per_worker=1, shard_rows=SHARD)
    assert not marker.exists()  # it did crash
    assert len(summary["workers"]) == 2  # the restarted actor is a new process
    got = _read(out)
    assert got["row"] == list(range(ROWS)) and summary["rows"] == ROWS
    good = _good(texts)
    expected = modernbert_edge.load(embedder).embed([texts[i] for i in good])
    np.testing.assert_allclose(np.array([got["embedding"][i] for i in good]), expected, atol=1e-6, rtol=0)


def test_rerun_writes_only_missing_shards(local_ray, corpus, embedder, tmp_path):
    root, _ = corpus
    run_batch(embedder, root / "docs.parquet", tmp_path, shard_rows=SHARD)
    before = _read(tmp_path)
    shards = sorted(tmp_path.glob("*.parquet"))
    mtimes = {p.name: p.stat().st_mtime_ns for p in shards}
    deleted = {shards[1].name, shards[4].name}
    for name in deleted:
        (tmp_path / name).unlink()
    (tmp_path / f".{shards[2].name}.dead.tmp").write_bytes(b"half a file")  # a killed write
    summary = run_batch(embedder, root / "docs.parquet", tmp_path, shard_rows=SHARD)
    assert summary["shards_run"] == 2 and summary["skipped_shards"] == len(shards) - 2
    assert summary["rows"] == 2 * SHARD
    for p in sorted(tmp_path.glob("*.parquet")):
        assert (p.stat().st_mtime_ns != mtimes[p.name]) == (p.name in deleted), p.name
    assert not list(tmp_path.glob(".*.tmp"))
    assert _read(tmp_path) == before  # same settings, same shards: the same numbers
    # Finished: nothing to run (Ray is not even asked); another job in the same folder is refused.
    assert run_batch(embedder, root / "docs.parquet", tmp_path, shard_rows=SHARD)["shards_run"] == 0
    with pytest.raises(UserError, match="another job"):
        run_batch(embedder, root / "docs.parquet", tmp_path, shard_rows=SHARD + 1)


def test_dataset_api_equals_in_process(local_ray, embedder, classifier):
    texts = ["the cat runs", "", "paris is the capital of france", "a lazy dog", "money"]
    ds = ray.data.from_items([{"k": i, "text": t} for i, t in enumerate(texts)])
    rows = sorted(embed(ds, embedder, workers=1, threads_per_worker=1).take_all(), key=lambda r: r["k"])
    expected = modernbert_edge.load(embedder).embed([t for t in texts if t])
    got = np.array([r["embedding"] for r in rows if r["error"] is None])
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert rows[1]["error"] == "text is empty (or only whitespace)." and rows[1]["embedding"] is None
    labelled = sorted(classify(ds, classifier, top_k=2, workers=1).take_all(), key=lambda r: r["k"])
    expected = modernbert_edge.load(classifier).classify([t for t in texts if t], top_k=2)
    assert [r["labels"] for r in labelled if r["error"] is None] == [
        [{"label": x["label"], "score": pytest.approx(x["score"], abs=1e-6)} for x in e] for e in expected
    ]


# ── without Ray running ─────────────────────────────────────────────────────────────────────────


def test_cores_used_once_rule():
    assert plan_workers(16) == (16, 1)
    assert plan_workers(16, workers=4) == (4, 4)
    assert plan_workers(16, threads=1) == (16, 1)
    assert plan_workers(1) == (1, 1)
    with pytest.raises(UserError, match="need 12 CPUs, but Ray has 8"):
        plan_workers(8, workers=4, threads=3)
    assert plan_workers(8, workers=4, threads=3, oversubscribe=True) == (4, 3)


def test_input_errors(corpus, embedder, tmp_path):
    root, _ = corpus
    with pytest.raises(UserError, match="has no column 'body'"):
        run_batch(embedder, root / "docs.parquet", tmp_path / "a", column="body")
    with pytest.raises(UserError, match="does not exist"):
        run_batch(embedder, root / "missing.parquet", tmp_path / "b")
    with pytest.raises(UserError, match="matches no"):
        run_batch(embedder, str(root / "*.txt"), tmp_path / "c")
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, values in (("lists", [["a", "b"], ["c"]]), ("structs", [{"t": "a"}, {"t": "b"}])):
        pq.write_table(pa.table({"text": values}), tmp_path / f"{name}.parquet")
        with pytest.raises(UserError, match=r"column 'text' holds (list|struct)<.*> values, not text"):
            run_batch(embedder, tmp_path / f"{name}.parquet", tmp_path / f"out-{name}")


def test_cli_registers_batch_without_importing_ray():
    code = (
        "import sys; from modernbert_edge import cli; assert 'batch' in [c.name for c in cli.app.registered_commands];"
        "print(sorted(m for m in ('ray', 'onnxruntime', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "ray" not in out and "pyarrow" not in out


@pytest.mark.parametrize("aggregation", ["simple", "none"])
def test_entities_as_arrow_equal_in_process(exported_factory, aggregation):
    from modernbert_edge.ray.results import Stats, run_values

    model = modernbert_edge.load(exported_factory("token-classification"))
    texts = ["alice works at acme corp in berlin", None, "bob in new york city since march", "  "]
    stats = Stats()
    columns = run_values(model, texts, "token-classification", {"aggregation": aggregation}, stats)
    expected = model.tag([texts[0], texts[2]], aggregation=aggregation)
    got = columns["entities"].to_pylist()
    assert [got[0], got[2]] == [
        [{**e, "score": pytest.approx(e["score"], abs=1e-6)} for e in entities] for entities in expected
    ]
    assert got[1] is None and got[3] is None
    assert columns["error"].to_pylist() == [
        None,
        "text is not a string (got NoneType).",
        None,
        "text is empty (or only whitespace).",
    ]
    assert stats.rows == 4 and stats.failed == 2 and stats.tokens > 10


def test_rerun_after_appending_rows_is_refused_in_one_sentence(local_ray, embedder, tmp_path):
    """Issue 24: 10 rows, --shard-rows 4, 5 rows appended, the same command again: refused, nothing
    written (before, it ran 1 of 4 shards, exit 0, and rows 10 and 11 were never processed)."""
    src = tmp_path / "in" / "rows.jsonl"
    src.parent.mkdir()
    src.write_text("".join(json.dumps({"id": i, "text": f"row {i}"}) + "\n" for i in range(10)))
    out = tmp_path / "out"
    run_batch(embedder, src, out, shard_rows=4)
    shards = sorted(p.name for p in out.glob("*.parquet"))
    with src.open("a") as f:
        f.write("".join(json.dumps({"id": i, "text": f"row {i}"}) + "\n" for i in range(10, 15)))
    with pytest.raises(UserError, match=r"the input changed since .* \(rows\.jsonl: size or time differ\)"):
        run_batch(embedder, src, out, shard_rows=4)
    assert sorted(p.name for p in out.glob("*.parquet")) == shards
    result = subprocess.run(
        [sys.executable, "-m", "modernbert_edge.cli", "batch", str(embedder), str(src), str(out), "--shard-rows", "4"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "the input changed" in result.stderr and "Traceback" not in result.stderr
    fresh = run_batch(embedder, src, tmp_path / "fresh", shard_rows=4)  # a new OUTPUT: every row once
    assert fresh["rows"] == 15 and sorted(_read(tmp_path / "fresh")["id"]) == list(range(15))


def test_output_is_checked_before_anything_runs(corpus, embedder, tmp_path):
    root, _ = corpus
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        run_batch(embedder, root / "docs.parquet", tmp_path / "file")
    with pytest.raises(UserError, match="inside the input folder"):
        run_batch(embedder, root, root / "out")
    assert not (root / "out").exists()


def test_bad_rows_of_every_format_are_error_rows(local_ray, embedder, tmp_path):
    """Issue 24: a JSONL line nested 100k deep or with a 5,000-digit integer, a Latin-1 byte in a CSV:
    one error row each, the other rows run (before, the whole job aborted with a Ray traceback)."""
    src = tmp_path / "in"
    src.mkdir()
    lines = [json.dumps({"id": 0, "text": "fine"}), '{"id": 1, "text": ' + "[" * 100_000 + "]" * 100_000 + "}",
             '{"id": 2, "text": "x", "n": ' + "9" * 5000 + "}", json.dumps({"id": 3, "text": "also fine"})]  # fmt: skip
    (src / "rows.jsonl").write_text("\n".join(lines) + "\n")
    (src / "rows.csv").write_bytes(b"id,text\n10,hello\n11,caf\xe9 au lait\n12,ok\n")
    summary = run_batch(embedder, src, tmp_path / "out", shard_rows=2)
    assert summary["rows"] == 7 and summary["failed"] == 3
    got = _read(tmp_path / "out")
    errors = {(s, r): e for s, r, e in zip(got["source"], got["row"], got["error"], strict=True)}
    assert "nested too deeply" in errors[("rows.jsonl", 1)] and "could not be read" in errors[("rows.jsonl", 2)]
    assert "not UTF-8" in errors[("rows.csv", 1)]
    assert errors[("rows.jsonl", 0)] is None and errors[("rows.csv", 0)] is None and errors[("rows.csv", 2)] is None


def test_batch_without_ray_writes_nothing(corpus, embedder, tmp_path):
    """Without the ray extra (its import blocked): one sentence naming the extra, exit 2, no OUTPUT folder."""
    root, _ = corpus
    block = (
        "import builtins, sys; real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] == 'ray': raise ImportError(f'blocked import of {name}', name=name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "from modernbert_edge.cli import main; sys.argv[0] = 'mbedge'; main()\n"
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", block, "batch", str(embedder), str(root / "docs.jsonl"), str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == ['error: this needs Ray Data: pip install "modernbert-edge[ray]".']
    assert not out.exists()
