"""int8 fidelity and speed per int8 kernel class: this CPU measured, an AVX2 CPU without VNNI emulated.

    python -m modernbert_edge.bench.kernel_classes WORK_DIR [--layers 6] [--hidden 256] [--repeats 5]

Builds the outlier-stress fill-mask model (a few residual channels 40× the rest, bench/checkpoints.py),
exports it, and quantizes it two ways: with the quantizer's weights (pair-safe: no same-sign pair of
adjacent int8 weights sums above 128, quantize/kernels.py) and with plain 8-bit weights (amax/127 per
column, what the quantizer wrote before). Each int8 graph and the fp32 graph run on the quantizer's
held-out batches: here, and under `qemu-x86_64 -cpu Haswell-noTSX` (onnxruntime's own
AVX2 kernels, instruction by instruction; `bash .ci/emulators.sh` fetches qemu) where qemu is present.
Prints, per variant, the worst and mean token cosine of the final hidden state to fp32 on each class,
and the speed of the two int8 graphs on this CPU (interleaved rounds; emulation says nothing of speed).
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from modernbert_edge import contract
from modernbert_edge.cpu import INT16_SATURATING, cpu_info

ROOT = Path(__file__).resolve().parents[1]
QEMU = Path(os.environ.get("MBEDGE_EMULATION_DIR", ROOT / ".emulation")) / "qemu/usr/bin/qemu-x86_64"
AVX2_CPU = "Haswell-noTSX"

# Run inside the emulator: only onnxruntime and numpy (importing onnx takes ~20 s there).
_DRIVER = """
import sys, numpy as np, onnxruntime as ort
feeds = np.load(sys.argv[1]); out = {}
for path in sys.argv[3:]:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_outputs()[-1].name
    for b in range(len(feeds.files) // 2):
        out[f"{path}|{b}"] = sess.run([name], contract.feeds(feeds[f"ids{b}"], feeds[f"mask{b}"]))[0]
np.savez(sys.argv[2], **out)
"""


def build(work: Path, layers: int, hidden: int) -> tuple[Path, dict[str, Path]]:
    """The fp32 folder and the two int8 folders (quantizer's weights, plain 8-bit weights)."""
    from unittest import mock

    from modernbert_edge.bench.checkpoints import make_checkpoint
    from modernbert_edge.export.exporter import export
    from modernbert_edge.quantize import weights
    from modernbert_edge.quantize.quantizer import quantize

    quiet = {"log": lambda _m: None}
    ckpt = make_checkpoint(
        work / "ckpt",
        "fill-mask",
        outlier_channels=3,
        outlier_scale=40,
        hidden_size=hidden,
        intermediate_size=hidden * 3 // 2,
        num_hidden_layers=layers,
        initializer_range=0.04,
    )
    src = work / "fp32"
    if not src.exists():
        export(str(ckpt), src, validate=False, **quiet)
    variants = {"int8 (pair-safe weights)": work / "int8", "int8 (plain 8-bit weights)": work / "int8-plain"}
    for name, out in variants.items():
        if out.exists():
            continue
        if "plain" in name:
            plain = lambda w_kn: weights.quantize_int8_columns(w_kn, product=False)  # noqa: E731 - amax/127
            with mock.patch.object(weights, "pair_safe_int8_columns", plain):
                quantize(src, out, fallback=False, force=True, **quiet)
        else:
            quantize(src, out, fallback=False, **quiet)
    return src, variants


def _with_hidden(folder: Path, tmp: Path) -> Path:
    """The folder's graph with the final hidden state as an extra output, written to tmp."""
    import onnx

    from modernbert_edge.export.names import FINAL_HIDDEN
    from modernbert_edge.quantize.smoothing import serialize_with_outputs

    path = tmp / f"{folder.name}.onnx"
    path.write_bytes(serialize_with_outputs(onnx.load(str(folder / "model.onnx")), [FINAL_HIDDEN]))
    return path


def hidden_states(files: list[Path], feeds: Path, out: Path, emulate: bool) -> dict[str, list[np.ndarray]]:
    """Each file's final hidden state on every batch of `feeds`, here or on the emulated AVX2 CPU."""
    cmd = [sys.executable, "-c", _DRIVER, str(feeds), str(out), *map(str, files)]
    if emulate:
        cmd = [str(QEMU), "-cpu", AVX2_CPU, *cmd]
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL if emulate else None)
    got = np.load(out)
    n = len(np.load(feeds).files) // 2
    return {str(f): [got[f"{f}|{b}"] for b in range(n)] for f in files}


def token_cosines(ref: list[np.ndarray], got: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """Cosine of every real token's final hidden state (the graph keeps them unpadded: (1, T, D))."""
    from modernbert_edge.timing import cosines

    a = np.concatenate([r.reshape(-1, r.shape[-1]) for r in ref])
    b = np.concatenate([g.reshape(-1, g.shape[-1]) for g in got])
    assert len(a) == sum(int((m > 0).sum()) for m in masks)
    return cosines(a, b)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    from modernbert_edge.quantize.calibration import load_data
    from modernbert_edge.quantize.fidelity import load_model
    from modernbert_edge.runtime.session import create_session
    from modernbert_edge.timing import summarize, time_calls

    args.work.mkdir(parents=True, exist_ok=True)
    src, variants = build(args.work, args.layers, args.hidden)
    _, manifest = load_model(src)
    data = load_data(src, manifest, None)
    batches = list(data.heldout)  # the held-out slice: emulation runs ~100x slower than the CPU
    here = cpu_info()
    print(f"this CPU: {here.line()}")
    classes = {here.kernel_class: False}
    if here.kernel_class != INT16_SATURATING and QEMU.is_file():
        classes[f"{INT16_SATURATING} (emulated {AVX2_CPU})"] = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        feeds = tmp_path / "feeds.npz"
        np.savez(
            feeds,
            **{f"ids{i}": b.input_ids for i, b in enumerate(batches)},
            **{f"mask{i}": b.attention_mask for i, b in enumerate(batches)},
        )
        files = {name: _with_hidden(folder, tmp_path) for name, folder in {"fp32": src, **variants}.items()}
        ref = hidden_states([files["fp32"]], feeds, tmp_path / "ref.npz", emulate=False)[str(files["fp32"])]
        masks = [b.attention_mask for b in batches]
        print(f"\n{'variant':<28} {'int8 kernel class':<44} {'worst cosine':>12} {'mean cosine':>12}")
        for label, emulate in classes.items():
            out = hidden_states(list(files.values()), feeds, tmp_path / f"{int(emulate)}.npz", emulate)
            for name, path in files.items():
                c = token_cosines(ref, out[str(path)], masks)
                print(f"{name:<28} {label:<44} {c.min():>12.5f} {c.mean():>12.5f}")
        import onnx

        ops = {name: [n.op_type for n in onnx.load(str(f / "model.onnx")).graph.node] for name, f in variants.items()}
        same = len({tuple(v) for v in ops.values()}) == 1  # plain weights also change smoothing's choices
        print(f"\nthe two int8 graphs have {'the same' if same else 'DIFFERENT'} nodes")
        sessions = {name: create_session(variants[name] / "model.onnx", 2) for name in variants}
        rng = np.random.default_rng(0)
        vocab = int(manifest["config"]["vocab_size"])
        print(f"\nspeed on this CPU (2 threads, median of {args.repeats} interleaved rounds):")
        for b, s in ((8, 128), (1, 512)):
            feed = contract.feeds(rng.integers(5, vocab, (b, s)), np.ones((b, s), dtype=np.int64))
            calls = {n: functools.partial(sess.run, None, feed) for n, sess in sessions.items()}
            row = {n: summarize(t)["median_ms"] for n, t in time_calls(calls, args.repeats).items()}
            (new, old), (t_new, t_old) = list(row), list(row.values())
            print(f"  {b}x{s}: {new} {t_new:.1f} ms, {old} {t_old:.1f} ms (plain / pair-safe {t_old / t_new:.2f})")


if __name__ == "__main__":
    main()
