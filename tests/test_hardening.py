"""Nothing lost, nothing crashes: OUT_DIR claims, trust boundaries, config values, faults.

Every case ends in one sentence (a UserError, exit 2 from the CLI), or a correct result; no
folder that existed before a command is touched. The fault tests kill real subprocesses at random
points; the full-filesystem tests mount a small tmpfs (root only).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from modernbert_edge import folders
from modernbert_edge.cli import app
from modernbert_edge.errors import UserError
from modernbert_edge.export.config import parse_config
from modernbert_edge.folders import OutputFolder
from modernbert_edge.manifest import read_manifest
from modernbert_edge.safetensors import Weights, find_weight_files

runner = CliRunner()
ASSETS = Path(__file__).resolve().parents[1] / "modernbert_edge" / "assets" / "modernbert-mini"


def assert_user_error(result, *fragments: str) -> None:  # noqa: ANN001
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) >= 1
    for fragment in fragments:
        assert fragment in result.output, result.output


def cli(*args: object):  # noqa: ANN201
    return runner.invoke(app, [str(a) for a in args])


def siblings(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def write_file(folder: Path, name: str = "f", data: bytes = b"x") -> None:
    (folder / name).write_bytes(data)


@pytest.fixture
def ckpt(checkpoint_factory, tmp_path) -> Path:
    return Path(shutil.copytree(checkpoint_factory("fill-mask"), tmp_path / "ckpt"))


# ---------------------------------------------------------------- OUT_DIR is claimed, not checked


def test_existing_folder_is_kept_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write_file(out, "keep.txt", b"mine")
    with pytest.raises(UserError, match="already exists"):
        OutputFolder(out, overwrite=False)
    assert (out / "keep.txt").read_bytes() == b"mine"


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "fallback"])
def test_folder_appearing_during_the_build_is_kept(tmp_path, monkeypatch, renameat2):
    if not renameat2:
        monkeypatch.setattr(folders, "_renameat2", None)
    out = tmp_path / "out"
    target = OutputFolder(out, overwrite=False)
    out.mkdir()  # someone else's folder, made while this run builds
    write_file(out, "theirs.txt", b"theirs")
    with pytest.raises(UserError, match="someone else"):
        target.write(write_file)
    assert (out / "theirs.txt").read_bytes() == b"theirs" and not (out / "f").exists()
    assert [s for s in siblings(tmp_path, "out") if ".tmp-" in s] == []


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "fallback"])
def test_overwrite_replaces_only_the_folder_seen_at_the_start(tmp_path, monkeypatch, renameat2):
    if not renameat2:
        monkeypatch.setattr(folders, "_renameat2", None)
    out = tmp_path / "out"
    out.mkdir()
    write_file(out, "old.txt")
    OutputFolder(out, overwrite=True, marker=None).write(write_file)  # mechanics; the marker: below
    assert sorted(p.name for p in out.iterdir()) == ["f"]

    target = OutputFolder(out, overwrite=True, marker=None)
    # Replaced by another writer meanwhile. The old folder is moved aside, not deleted: a deleted folder's
    # inode number may be given to the new one, and (device, inode) is what identifies the folder seen.
    out.rename(tmp_path / "moved-aside")
    out.mkdir()
    write_file(out, "other.txt")
    with pytest.raises(UserError, match="someone else"):
        target.write(lambda tmp: write_file(tmp, "mine.txt"))
    assert sorted(p.name for p in out.iterdir()) == ["other.txt"]
    assert [s for s in siblings(tmp_path, "out") if ".tmp-" in s or ".old-" in s] == []


def test_concurrent_writers_exactly_one_wins(tmp_path):
    out = tmp_path / "out"
    barrier = threading.Barrier(4)
    results: list[str] = []

    def writer(i: int) -> None:
        target = OutputFolder(out, overwrite=False)

        def fill(tmp: Path) -> None:
            write_file(tmp, f"w{i}")
            barrier.wait(timeout=10)  # all four have built before any claims

        try:
            target.write(fill)
            results.append(f"won {i}")
        except UserError as e:
            results.append(str(e))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r.startswith("won")]
    assert len(winners) == 1, results
    assert [p.name for p in out.iterdir()] == [f"w{winners[0].split()[1]}"]
    assert all("someone else" in r for r in results if not r.startswith("won"))
    assert [s for s in siblings(tmp_path, "out") if ".tmp-" in s] == []


def test_two_concurrent_exports_one_wins_one_exits_2(ckpt, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "from modernbert_edge.cli import main; main()", "export", str(ckpt), str(out)]
    procs = [subprocess.Popen([*cmd, "--no-validate"], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((p.wait(timeout=300), p.stderr.read()) for p in procs)
    assert [code for code, _ in results] == [0, 2], results
    assert "Traceback" not in results[1][1] and str(out) in results[1][1]
    assert (out / "manifest.json").is_file() and [s for s in siblings(tmp_path, "out") if ".tmp-" in s] == []


def test_stale_temporaries_of_dead_runs_are_cleaned(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = time.time() - 2 * folders.STALE_AFTER_S
    stale = tmp_path / f".out.tmp-{dead.pid}-aaaa"
    recent = tmp_path / f".out.tmp-{dead.pid}-bbbb"
    alive = tmp_path / f".out.tmp-{os.getppid()}-cccc"
    aside = tmp_path / f".out.old-{dead.pid}-dddd"  # a killed two-step --overwrite's old folder
    for p in (stale, recent, alive, aside):
        p.mkdir()
        write_file(p)
    for p in (stale, alive, aside):
        os.utime(p, (old, old))
    OutputFolder(tmp_path / "out", overwrite=True, marker=None)
    assert not stale.exists() and recent.exists() and alive.exists() and not aside.exists()
    assert (tmp_path / "out" / "f").exists()  # moved back: OUT_DIR has its old folder again


def test_overwrite_replaces_only_a_model_folder_or_an_empty_one(tmp_path, ckpt, exported_factory):
    """A mistyped OUT_DIR with --overwrite used to take a folder of the user's files with it."""
    out = tmp_path / "mydocs"
    (out / "sub").mkdir(parents=True)
    write_file(out, "notes.txt", b"important")
    with pytest.raises(UserError, match="no manifest.json, so it is not a model folder"):
        OutputFolder(out, overwrite=True)
    fp32 = exported_factory("feature-extraction")
    for args in (("export", ckpt, out, "--no-validate"), ("quantize", fp32, out)):
        assert_user_error(cli(*args, "--overwrite"), "not a model folder")
    assert (out / "notes.txt").read_bytes() == b"important" and (out / "sub").is_dir()
    empty = tmp_path / "empty"
    empty.mkdir()
    OutputFolder(empty, overwrite=True).write(write_file)  # an empty folder may be replaced
    model = tmp_path / "model"
    model.mkdir()
    write_file(model, "manifest.json", b"{}")
    OutputFolder(model, overwrite=True).write(write_file)  # so may a model folder
    assert sorted(p.name for p in model.iterdir()) == ["f"]


@pytest.mark.parametrize("inside", ["same", "inside", "contains"])
def test_source_is_never_the_target(tmp_path, inside):
    src = tmp_path / "src"
    src.mkdir()
    out = {"same": src, "inside": src / "sub", "contains": tmp_path}[inside]
    with pytest.raises(UserError, match="source folder"):
        OutputFolder(out, overwrite=True, sources=[src])
    assert src.is_dir()


def test_export_and_quantize_refuse_their_source(ckpt, exported_factory, tmp_path):
    assert_user_error(cli("export", ckpt, ckpt, "--overwrite", "--no-validate"), "source folder")
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.json").is_file()
    model = exported_factory("fill-mask")
    assert_user_error(cli("quantize", model, model, "--overwrite"), "source folder")
    assert read_manifest(model)["precision"] == "fp32"


def test_parent_is_a_file(ckpt, tmp_path):
    (tmp_path / "file").write_text("x")
    assert_user_error(cli("export", ckpt, tmp_path / "file" / "out", "--no-validate"), "is a file")
    assert_user_error(cli("export", ckpt, tmp_path / "file", "--no-validate", "--overwrite"), "not a folder")
    assert (tmp_path / "file").read_text() == "x"


def _without_dac_override() -> None:
    """In a child before exec: drop the capabilities by which root ignores file permissions."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH; PR_CAPBSET_DROP = 24
        if libc.prctl(24, cap, 0, 0, 0):
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_no_permission_is_refused_before_the_build(ckpt, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() != 0:
        assert_user_error(cli("export", ckpt, locked / "out", "--no-validate"), "cannot be written")
        return
    # root ignores folder permissions: the export runs in a child process without those capabilities
    code = "from modernbert_edge.cli import main; main()"
    args = [sys.executable, "-c", code, "export", str(ckpt), str(locked / "out"), "--no-validate"]
    proc = subprocess.run(args, capture_output=True, text=True, preexec_fn=_without_dac_override, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot be written" in proc.stderr, proc.stderr
    assert list(locked.iterdir()) == []


# ---------------------------------------------------------------- small filesystems (root: tmpfs)


@pytest.fixture
def tmpfs(tmp_path, request):
    """A 1 MB tmpfs, as root. As an ordinary user the test runs again, as root of a new user and mount
    namespace (`unshare -rm`), which may mount one; the fixture then gives None and the test returns,
    its outcome that run's."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command to make a tmpfs with")
    if os.geteuid() != 0:
        if shutil.which("unshare") is None:
            pytest.skip("as an ordinary user a tmpfs needs a user namespace, and unshare is not installed")
        probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
        if probe.returncode:
            pytest.skip(f"this machine gives no user namespace to mount a tmpfs in ({probe.stderr.decode().strip()})")
        inner = subprocess.run(
            [
                "unshare",
                "-rm",
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-rs",
                "-p",
                "no:cacheprovider",
                request.node.nodeid,
            ],
            cwd=request.config.rootpath,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if inner.returncode == 0 and " 1 skipped" in inner.stdout:  # no tmpfs in the namespace either
            pytest.skip(f"in a user namespace: {inner.stdout.strip().splitlines()[-2]}")
        assert inner.returncode == 0 and " 1 passed" in inner.stdout, inner.stdout[-4000:] + inner.stderr[-2000:]
        yield None
        return
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("this container may not mount a tmpfs")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_filesystem_before_and_during_the_write(ckpt, tmpfs):
    if tmpfs is None:  # ran in a user namespace
        return
    (tmpfs / "filler").write_bytes(bytes(600_000))  # 0.4 MB left, the weights alone are 0.7 MB
    assert_user_error(cli("export", ckpt, tmpfs / "out", "--no-validate"), "MB free")
    target = OutputFolder(tmpfs / "out2", overwrite=False)
    with pytest.raises(UserError, match="No space left"):
        target.write(lambda tmp: write_file(tmp, "big", bytes(2_000_000)))
    assert sorted(p.name for p in tmpfs.iterdir()) == ["filler"]  # nothing half-written


def test_read_only_filesystem_is_refused_before_the_build(ckpt, tmpfs):
    if tmpfs is None:  # ran in a user namespace
        return
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    assert_user_error(cli("export", ckpt, tmpfs / "out", "--no-validate"), "Read-only file system")


# ---------------------------------------------------------------- faults: SIGKILL at random points


def _run_killed(args: list[str], delay: float) -> bool:
    """Run `mbedge ARGS` in a subprocess and SIGKILL it after `delay` seconds; whether it was killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from modernbert_edge.cli import main; main()", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def _timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    assert not _run_killed(args, 300)
    return time.perf_counter() - t0


def _complete(folder: Path) -> bool:
    manifest = read_manifest(folder)
    files = [manifest["model_file"], "config.json", *manifest["tokenizer_files"]]
    return all((folder / f).is_file() for f in files) and (folder / manifest["model_file"]).stat().st_size > 0


def _age_temporaries(parent: Path, name: str) -> None:
    old = time.time() - 2 * folders.STALE_AFTER_S
    for s in siblings(parent, name):
        if ".tmp-" in s or ".old-" in s:
            os.utime(parent / s, (old, old))


def _kill_repeatedly(args: list[str], out: Path, runs: int) -> None:
    """Kill `mbedge ARGS` at random points of a run (alternately with --overwrite of a complete
    folder); OUT_DIR is always absent or complete, and the source and a bystander are untouched."""
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    bystander = out.parent / "bystander"
    bystander.mkdir()
    write_file(bystander, "keep.txt", b"keep")
    full = _timed([*args, str(out)])  # one uninterrupted run: how long the kill window is
    assert _complete(out)
    killed = 0
    for i in range(runs):
        overwrite = i % 2 == 0
        if not overwrite:
            shutil.rmtree(out, ignore_errors=True)
        existed = out.exists()
        delay = rng.uniform(0.05, full)
        killed += _run_killed([*args, str(out), *(["--overwrite"] if overwrite else [])], delay)
        context = f"seed {seed}, run {i}, killed after {delay:.2f} s of {full:.2f}"
        if existed:  # --overwrite: the old or the new folder at every instant, never neither
            assert out.exists(), context
        if out.exists():
            assert _complete(out), context
        assert (bystander / "keep.txt").read_bytes() == b"keep", context
        _age_temporaries(out.parent, out.name)
    assert killed, f"seed {seed}: no run was killed before it ended"
    OutputFolder(out, overwrite=True)  # the next run removes the dead runs' temporaries
    assert [s for s in siblings(out.parent, out.name) if ".tmp-" in s or ".old-" in s] == []


def test_killed_exports_leave_nothing_or_a_complete_folder(ckpt, tmp_path):
    _kill_repeatedly(["export", str(ckpt), "--no-validate"], tmp_path / "out", runs=4)
    assert (ckpt / "model.safetensors").is_file()


def test_killed_quantize_leaves_nothing_or_a_complete_folder(exported_factory, tmp_path):
    model = exported_factory("fill-mask")
    _kill_repeatedly(["quantize", str(model)], tmp_path / "q", runs=2)
    assert read_manifest(model)["precision"] == "fp32" and _complete(model)


# ---------------------------------------------------------------- trust boundaries


def _safetensors(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    "entries,data,fragment",
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, 8, "invalid data_offsets"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, 8, "invalid data_offsets"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            12,
            "overlaps",
        ),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            },
            8,
            "overlaps",
        ),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 4, "truncated"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, 12, "gap"),
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, 8, "needs 16"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 8, "invalid shape"),
        ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, 8, "unsupported dtype"),
        ({"a": [1, 2]}, 8, "not an object"),
    ],
)
def test_safetensors_offsets_shapes_and_dtypes_are_checked(tmp_path, entries, data, fragment):
    path = _safetensors(tmp_path / "model.safetensors", entries, bytes(data))
    with pytest.raises(UserError, match=fragment):
        Weights([path])


def test_safetensors_header_length_beyond_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(UserError, match="header length"):
        Weights([path])


@pytest.mark.parametrize(
    "weight_map,fragment",
    [
        (["model.safetensors"], "must be an object"),
        ({"a": "../x.safetensors"}, "outside"),
        ({"a": "/x.safetensors"}, "outside"),
    ],
)
def test_index_shards_stay_inside_the_folder(tmp_path, weight_map, fragment):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    _safetensors(tmp_path / "x.safetensors", {}, b"")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(UserError, match=fragment):
        find_weight_files(folder)


@pytest.mark.parametrize("model_file", ["../other/model.onnx", "/etc/passwd", "sub/model.onnx", "..", 5])
def test_manifest_model_file_is_a_plain_name(exported_factory, tmp_path, model_file):
    folder = Path(shutil.copytree(exported_factory("fill-mask"), tmp_path / "m"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model_file"] = model_file
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="file name inside the folder"):
        read_manifest(folder)
    assert_user_error(cli("info", folder), "file name inside the folder")


def test_parity_refuses_pytorch_model_bin(ckpt, exported_factory):
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"not unpickled")
    assert_user_error(cli("parity", ckpt, exported_factory("fill-mask")), "pytorch_model.bin")


def test_a_local_path_with_a_typo_is_not_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpts").mkdir()
    for path in ("ckpts/mymodel", "./mymodel", "~/nope-mymodel", "a/b/c"):
        assert_user_error(cli("export", path, tmp_path / "out"), "does not exist")


# ---------------------------------------------------------------- config values, one place


BAD_CONFIG = [
    ("max_position_embeddings", 0),
    ("max_position_embeddings", -5),
    ("max_position_embeddings", 1.5),
    ("max_position_embeddings", 10**8),
    ("norm_eps", -1),
    ("norm_eps", "abc"),
    ("norm_eps", float("nan")),
    ("global_rope_theta", float("nan")),
    ("global_rope_theta", "x"),
    ("layer_types", 5),
    ("layer_types", ["full_attention"]),
    ("layer_types", [["full_attention"]] * 4),
    ("id2label", ["a", "b"]),
    ("id2label", {"0": "a", "2": "b"}),
    ("id2label", {"x": "a"}),
    ("num_labels", "x"),
    ("num_labels", True),
    ("rope_parameters", {"full_attention": [1, 2]}),
    ("rope_parameters", {"full_attention": {"rope_theta": float("inf")}}),
    ("rope_scaling", [1]),
    ("local_attention", 40000),
    ("local_attention", 1.0),
    ("hidden_activation", ["gelu"]),
    ("problem_type", "ranking"),
    ("pad_token_id", 10**9),
    ("architectures", "ModernBertForMaskedLM"),
    ("global_attn_every_n_layers", 0),
    ("vocab_size", 10**12),
]


@pytest.fixture(scope="module")
def base_config(checkpoint_factory) -> dict:
    return json.loads((checkpoint_factory("fill-mask") / "config.json").read_text())


@pytest.mark.parametrize("key,value", BAD_CONFIG, ids=[f"{k}={v!r}"[:40] for k, v in BAD_CONFIG])
def test_config_values_are_checked(base_config, key, value):
    with pytest.raises(UserError, match=key.split("_")[0]):
        parse_config({**base_config, key: value})


def test_bad_config_exits_2_and_writes_nothing(ckpt, tmp_path):
    raw = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**raw, "norm_eps": "abc"}))
    assert_user_error(cli("export", ckpt, tmp_path / "out", "--no-validate"), "norm_eps")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- export proves its folder


def _export_fails(ckpt: Path, tmp_path: Path, *fragments: str) -> None:
    assert_user_error(cli("export", ckpt, tmp_path / "out", "--no-validate"), *fragments)
    assert not (tmp_path / "out").exists() and siblings(tmp_path, "out") == []


def test_export_refuses_a_corrupt_tokenizer(ckpt, tmp_path):
    (ckpt / "tokenizer.json").write_text('{"version": "1.0", "model": 5}')
    _export_fails(ckpt, tmp_path, "tokenizer.json")


def test_export_refuses_a_foreign_tokenizer(ckpt, tmp_path):
    shutil.copy(ASSETS / "tokenizer.json", ckpt / "tokenizer.json")  # 12288 ids for a 512-row vocabulary
    _export_fails(ckpt, tmp_path, "not this model's")


def test_export_refuses_a_garbage_tokenizer_config(ckpt, tmp_path):
    (ckpt / "tokenizer_config.json").write_text("{garbage")
    _export_fails(ckpt, tmp_path, "tokenizer_config.json")


def test_export_refuses_a_model_with_non_finite_outputs(ckpt, tmp_path):
    path = ckpt / "model.safetensors"
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    info = json.loads(data[8 : 8 + n])["model.final_norm.weight"]
    begin, end = (8 + n + o for o in info["data_offsets"])
    data[begin:end] = np.full((end - begin) // 4, np.nan, dtype=np.float32).tobytes()
    path.write_bytes(bytes(data))
    _export_fails(ckpt, tmp_path, "not finite")


# ---------------------------------------------------------------- quantize


@pytest.mark.parametrize("value", ["2", "-1", "nan", "0"])
def test_min_cosine_must_be_a_cosine(exported_factory, tmp_path, value):
    result = cli("quantize", exported_factory("fill-mask"), tmp_path / "q", "--min-cosine", value)
    assert_user_error(result, "--min-cosine")
    assert not (tmp_path / "q").exists()


def test_quantize_and_compare_short_position_limits(exported_factory, tmp_path):
    model = exported_factory("fill-mask", max_position_embeddings=64)
    result = cli("quantize", model, tmp_path / "q", "--min-cosine", "0.5")
    assert result.exit_code == 0, result.output
    result = cli("compare", model, tmp_path / "q")
    assert result.exit_code == 0 and "token cosine" in result.output, result.output


# ---------------------------------------------------------------- property-based


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
CONFIG_KEYS = [k for k, _ in BAD_CONFIG] + [
    "hidden_size",
    "num_attention_heads",
    "num_hidden_layers",
    "intermediate_size",
    "head_dim",
    "local_rope_theta",
    "classifier_pooling",
    "norm_bias",
    "model_type",
]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(CONFIG_KEYS), _json | st.integers(0, 4096), min_size=1, max_size=4))
def test_any_config_values_give_a_config_or_a_user_error(base_config, changes):
    try:
        cfg = parse_config({**base_config, **changes})
    except UserError:
        return
    assert 1 <= cfg.max_position_embeddings <= 1 << 17 and math.isfinite(cfg.norm_eps) and cfg.norm_eps > 0
    assert all(math.isfinite(x) and x > 0 for x in (cfg.global_rope_theta, cfg.local_rope_theta))
    assert len(cfg.layer_types) == cfg.num_hidden_layers


_entry = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "X9"]) | _json,
        "shape": st.lists(st.integers(-2, 6), max_size=3) | _json,
        "data_offsets": st.lists(st.integers(-8, 80), min_size=2, max_size=2) | _json,
    }
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(st.text(min_size=1, max_size=6), _entry | _json, max_size=4),
    st.integers(0, 96),
    st.sampled_from([None, 0, 1, 2**40]),
)
def test_any_safetensors_header_gives_tensors_or_a_user_error(tmp_path, header, data_bytes, length):
    raw = json.dumps(header).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + bytes(data_bytes))
    try:
        weights = Weights([path])
    except UserError:
        return
    for name in weights.names():  # every tensor the reader accepted is readable as declared
        shape = tuple(header[name]["shape"])
        assert weights.get(name, shape).shape == shape


_tensor = st.tuples(st.sampled_from(["F32", "F16", "BF16", "I64", "U8"]), st.lists(st.integers(1, 4), max_size=3))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_tensor, min_size=1, max_size=4), st.integers(0, 3), st.integers(0, 1), st.integers(-9, 9))
def test_tiled_safetensors_load_exactly_and_any_shifted_offset_is_refused(tmp_path, tensors, which, side, shift):
    header, offset, values = {}, 0, {}
    rng = np.random.default_rng(len(tensors))
    data = b""
    for i, (dtype, shape) in enumerate(tensors):
        itemsize = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U8": 1}[dtype]
        raw = rng.integers(0, 100, size=math.prod(shape) * itemsize, dtype=np.uint8).tobytes()
        header[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        values[f"t{i}"] = raw
        data, offset = data + raw, offset + len(raw)
    name = f"t{which % len(tensors)}"
    header[name]["data_offsets"][side] += shift
    path = _safetensors(tmp_path / "model.safetensors", header, data)
    if shift:
        with pytest.raises(UserError):
            Weights([path])
        return
    weights = Weights([path])
    for name, (dtype, shape) in zip(header, tensors, strict=True):
        expected = np.frombuffer(
            values[name],
            dtype={"F32": np.float32, "F16": np.float16, "I64": np.int64, "U8": np.uint8, "BF16": np.uint16}[dtype],
        )
        if dtype == "BF16":
            expected = (expected.astype(np.uint32) << 16).view(np.float32)
        np.testing.assert_array_equal(weights.get(name, tuple(shape)), expected.astype(np.float32).reshape(shape))
