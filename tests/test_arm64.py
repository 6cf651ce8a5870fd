"""ARM64, emulated: the same folders give x86's answers on two ARM CPUs (issue 19; docs/arm64.md).

Every folder is built on x86 (each task in fp32, int8, int8-static and int4; an outlier-stress int8
folder; the bundled model), then tests/arm64_driver.py runs all of them in one process per CPU:
natively for the reference, and under qemu-aarch64 on a Neoverse N2 (dot product and i8mm), a
Cortex-A72 (neither: a Raspberry Pi 4's core) and `-cpu max` (SME, on a subset), in the arm64 Python
that .ci/arm64-env.sh builds. tests/arm64_jobs.py builds and starts them with the session's first
test (conftest.py), so they run beside the rest of the suite; these checks run last and wait for
them. Where the arm64 Python or the emulator is missing the tests skip, saying how to get them.

What "the same" means here:
- fp32: every number within 1e-4 of x86's: load()'s and `mbedge run`'s results, and the graphs'
  outputs on the fidelity batches (padded rows, and a row longer than the local window).
- quantized: what the quantize report promises, on the report's own batches: the worst-token cosine
  to x86 fp32 at least the report's figure for ARM's kernel class, the largest logit difference at
  most the report's, and labels / fill-mask top-1 equal to fp32's wherever fp32's margin (top-1
  minus top-2 logit) exceeds twice that difference: each logit moves by at most it, so two logits
  further apart keep their order. On load()'s results the same rule, the margin read from the
  scores (log p1/p2 is the logit margin of a softmax).
- int8 products: MatMulInteger (u8 × s8 -> int32) on random full-range operands equals the exact
  product on both ARM CPUs; on x86 exactly when cpu_info() says int32-accumulating (an AVX2 CPU
  without VNNI saturates, which shows the probe can fail).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from arm64_jobs import CPUS, EDGE_OPERANDS, FULL, MODES, PROBE_SHAPES, ROOT, SLICES

from modernbert_edge.cpu import INT32, cpu_info
from modernbert_edge.export.names import FINAL_HIDDEN
from modernbert_edge.export.tasks import TASKS
from modernbert_edge.timing import cosines

FP32_TOL = 1e-4
# The report's figures are printed to 5 decimals; a float kernel that rounds differently moves them by
# less: a figure "kept" is kept to that precision (cosines), or to the fp32 tolerance (logits).
REPORT_PRECISION = 1e-5
STRESS_TOL = 0.002  # issue 19: the outlier-stress folder's worst-token cosine on ARM vs x86's int8 figure


@pytest.fixture(scope="module")
def work(arm64_drivers):
    """The drivers' results, once they have finished (started with the session's first test)."""
    return arm64_drivers.results()


def _dynamic_quantize_matmul(x: np.ndarray, w: np.ndarray, w_scale: np.ndarray, per_row: bool) -> np.ndarray:
    """What DynamicQuantizeMatMul returns with exact int32 products: activations quantized as onnxruntime's
    MLAS path does (DynamicQuantizeLinear: uint8, one scale per tensor) or KleidiAI's (int8, one per row)."""
    rows = []
    for r in x if per_row else [x]:
        lo, hi = min(0.0, float(r.min())), max(0.0, float(r.max()))
        scale = np.float32((hi - lo) / 255)
        qmin = -128 if per_row else 0
        zp = np.rint(np.clip(qmin - lo / scale, qmin, qmin + 255))
        q = np.clip(np.rint(r / scale) + zp, qmin, qmin + 255).astype(np.int64)
        rows.append(((q - zp) @ w.astype(np.int64)).astype(np.float32) * (scale * w_scale))
    return np.vstack(rows)


# ---------------------------------------------------------------- the checks


@pytest.mark.parametrize("cpu", CPUS)
def test_cpu_info_reads_the_emulated_arm_cpu(work, cpu):
    info = work["out"][cpu]["cpu"]
    assert info["arch"] == "aarch64" and info["int8_kernel_class"] == INT32
    assert {k: info["features"][k] for k in CPUS[cpu]} == CPUS[cpu], info
    assert info["features"]["neon"] is True


@pytest.mark.parametrize("where", ["x86", *CPUS])
def test_int8_products_accumulate_in_int32(work, where):
    """onnxruntime's u8 x s8 product (MatMulInteger) is exact on every ARM CPU; on x86 as cpu_info()'s
    class says (an AVX2 CPU without VNNI saturates: the probe can fail)."""
    exact = []
    for i in range(len(PROBE_SHAPES)):
        feeds, got = np.load(work["tmp"] / f"probe-mmi-{i}.npz"), _outputs(work, where, f"probe/mmi-{i}")
        exact.append(np.array_equal(got["y"], feeds["a"].astype(np.int64) @ feeds["b"].astype(np.int64)))
    expected = where != "x86" or cpu_info().kernel_class == INT32
    assert exact == [expected] * len(PROBE_SHAPES), (where, work["out"][where]["cpu"]["int8_kernel"])


@pytest.mark.parametrize("where", ["x86", *CPUS])
def test_int8_products_at_the_extremes(work, where):
    """The extremes: exact everywhere but in MLAS's NEON kernel without dot product (Cortex-A72), which
    makes activations signed (a - 128) and adds two int8 x int8 products in int16 before widening: only
    (-128)(-128) + (-128)(-128) = 32768 overflows, i.e. a = 0 against two weights of -128. The weights of
    mbedge quantize lie in [-127, 127] (quantize/weights.py), where the sums stay within 32512: exact.
    (x86's AVX2 class saturates only with large activations times large same-sign weights.)"""
    kernel = work["out"][where]["cpu"]["int8_kernel"]
    for av, bv in EDGE_OPERANDS:
        feeds, got = np.load(work["tmp"] / f"probe-edge-{av}{bv}.npz"), _outputs(work, where, f"probe/edge-{av}{bv}")
        exact = np.array_equal(got["y"], feeds["a"].astype(np.int64) @ feeds["b"].astype(np.int64))
        overflows = kernel.startswith("NEON") and (av, bv) == (0, -128)
        saturates = work["out"][where]["cpu"]["int8_kernel_class"] != INT32 and av == 255
        assert exact == (not overflows and not saturates), (where, kernel, av, bv)


@pytest.mark.parametrize("where", ["x86", *CPUS])
def test_dynamic_quantize_matmul_quantizes_activations_as_cpu_info_says(work, where):
    """DynamicQuantizeMatMul (what int8 folders run): per-tensor uint8 activations (MLAS) everywhere but on
    ARM CPUs with SME, where onnxruntime's KleidiAI kernel quantizes them per row; exact products either way
    (the AVX2 class aside, whose saturation these operands do not reach: |x| is small at most positions)."""
    feeds, got = np.load(work["tmp"] / "probe-dq.npz"), _outputs(work, where, "probe/dq")["y"]
    per_row = bool(work["out"][where]["cpu"]["features"].get("sme"))
    assert per_row == ("per row" in work["out"][where]["cpu"]["int8_kernel"])
    expected = _dynamic_quantize_matmul(feeds["x"], feeds["w"], feeds["w_scale"], per_row)
    other = _dynamic_quantize_matmul(feeds["x"], feeds["w"], feeds["w_scale"], not per_row)
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() <= 1e-6 * scale < np.abs(got - other).max(), where


@pytest.mark.parametrize("cpu", FULL)
def test_fp32_folders_match_x86(work, cpu):
    """Every fp32 folder: load()'s and `mbedge run`'s results, and the graph on the fidelity batches."""
    for name, x86 in work["out"]["x86"]["folders"].items():
        if not name.endswith("/fp32"):
            continue
        arm = work["out"][cpu]["folders"][name]
        assert arm["cli_exit"] == x86["cli_exit"] == 0, name
        _assert_close(arm["api"], x86["api"], FP32_TOL, name)
        _assert_close(_cli_results(arm["cli"]), _cli_results(x86["cli"]), FP32_TOL, name)
    for g in work["graphs"]:
        if g["name"].endswith("/fp32") and g["arm"]:
            arm, x86 = (_outputs(work, w, g["name"]) for w in (cpu, "x86"))
            assert sorted(arm.files) == sorted(x86.files)
            for k in x86.files:
                np.testing.assert_allclose(arm[k], x86[k], atol=FP32_TOL, rtol=0, err_msg=f"{g['name']} {k}")


# int4 on a CPU with dot product runs onnxruntime's KleidiAI MatMulNBits kernels (…_qai8dxp…_qsi4c32p…
# _neon_dotprod / _neon_i8mm in the aarch64 wheel), which quantize the activations per row, not per
# block of 32 as MLAS does on x86 and on the Cortex-A72: the tiny fill-mask folder's largest logit
# difference came out 0.0337 against the report's 0.0325 (worst-token cosine kept), and 0.0329 against
# 0.0337 once the quantizer's weights changed: within or beyond the report by chance. The report has no
# figure for that path; this marks the gap (not strict: whether it holds is luck until the report covers it).
INT4_KLEIDIAI = pytest.mark.xfail(reason="int4 via KleidiAI (per-row int8 activations): no report figure", strict=False)


@pytest.mark.parametrize(
    "cpu, mode",
    [
        pytest.param(c, m, marks=INT4_KLEIDIAI if (c, m) == ("neoverse-n2", "int4") else ())
        for c in FULL
        for m in MODES[1:]
    ],
)
def test_quantized_folders_keep_the_reports_promise(work, cpu, mode):
    for task in TASKS:
        name = f"{task}/{mode}"
        figures, promised = _fidelity(work, cpu, name, task), _promised_for(work, name)
        print(f"{cpu} {name}: {figures} (report: {promised})")
        assert figures["cosine_worst"] >= promised["cosine_worst"] - REPORT_PRECISION, (name, figures, promised)
        if promised["max_logit_diff"] is not None:
            assert figures["max_logit_diff"] <= promised["max_logit_diff"] + FP32_TOL, (name, figures, promised)
            assert figures["disagree_beyond_margin"] == 0, (name, figures, promised)


@pytest.mark.parametrize("cpu", CPUS)
def test_quantized_results_keep_fp32_labels_where_margins_allow(work, cpu):
    """load() and `mbedge run` on ARM: classify's label and fill-mask's top-1 are fp32's on x86 wherever
    x86 fp32's logit margin is above twice the report's largest logit difference; the other results run."""
    x86 = work["out"]["x86"]["folders"]
    checked = [0, 0]  # top-1 decisions left unchecked (margin too small), checked
    for name, arm in work["out"][cpu]["folders"].items():
        base, mode = name.rsplit("/", 1)
        if mode == "fp32":
            continue
        assert arm["cli_exit"] == 0 and len(arm["cli"]) == len(x86[name]["cli"]), name
        # the CLI's results are load()'s (the same process, the same batching)
        _assert_close(_cli_results(arm["cli"]), arm["api"][next(iter(arm["api"]))][: len(arm["cli"])], 1e-6, name)
        diff = _promised(work["manifests"][name]["fidelity"], tuple(SLICES))["max_logit_diff"]
        ref = x86[f"{base}/fp32"]["api"]
        for method in ("classify", "fill_mask"):
            if method not in ref:
                continue
            key = "token" if method == "fill_mask" else "label"
            for i, (r, a) in enumerate(zip(ref[method], arm["api"][method], strict=True)):
                # per text: fill-mask a ranked list per [MASK], classify one ranked list
                for rr, aa in zip(*((r, a) if method == "fill_mask" else ([r], [a])), strict=True):
                    margin = math.log(rr[0]["score"] / rr[1]["score"])
                    checked[margin > 2 * diff] += 1
                    if margin > 2 * diff:
                        assert aa[0][key] == rr[0][key], (name, i, margin, diff)
    print(f"{cpu}: {checked[1]} top-1 decisions checked, {checked[0]} within the margin")
    assert checked[1] > 0  # the rule must bite somewhere (the bundled model's trained margins)


def test_outlier_stress_int8_matches_x86_on_arm(work):
    """Issue 19's check: worst-token cosine to x86 fp32 on each ARM CPU within 0.002 of x86's int8 figure
    (and of the report's figure for ARM's class), on the report's batches."""
    x86 = _fidelity(work, "x86", "stress/int8", "feature-extraction")["cosine_worst"]
    report = _promised_for(work, "stress/int8")["cosine_worst"]
    figures = {cpu: _fidelity(work, cpu, "stress/int8", "feature-extraction")["cosine_worst"] for cpu in CPUS}
    print(f"outlier stress int8, worst-token cosine to x86 fp32: x86 {x86:.5f}, report {report:.5f}, {figures}")
    for cpu, cos in figures.items():
        assert abs(cos - x86) <= STRESS_TOL and abs(cos - report) <= STRESS_TOL, (cpu, cos, x86, report)


@pytest.mark.parametrize("cpu", FULL)
def test_bundled_model_runs_as_on_x86(work, cpu):
    """The demo's texts on the bundled model: fp32 as x86 (checked above), int8's similarities within the
    demo's 0.01 of fp32's on x86, and its fill-mask top-1 by the margin rule (checked above)."""
    x86, arm = work["out"]["x86"]["folders"], work["out"][cpu]["folders"]
    ref = np.array(x86["mini-feature-extraction/fp32"]["api"]["embed"])
    got = np.array(arm["mini-feature-extraction/int8"]["api"]["embed"])
    sim = lambda e: (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (e / np.linalg.norm(e, axis=1, keepdims=True)).T  # noqa: E731
    assert np.abs(sim(got) - sim(ref)).max() <= 0.01
    top1 = [text[0][0]["token_str"].strip() for text in arm["mini-fill-mask/int8"]["api"]["fill_mask"]]
    assert top1[:2] == ["3", "arguments"], top1  # as `mbedge demo` prints (README), a trained model's answers


# ---------------------------------------------------------------- helpers


def _promised(fidelity: dict, slices: tuple[str, ...]) -> dict:
    """The report's figures for ARM's kernel class on `slices`: the worst-token cosine from
    fidelity["kernel_classes"]["classes"][INT32] where the report has per-class figures (a worst over
    every slice, so a bound for each), else the slices' own (measured on the CPU that quantized); the
    largest logit difference of the slices (the report has no per-class one)."""
    per_class = fidelity.get("kernel_classes", {}).get("classes", {}).get(INT32, {}).get("cosine_worst")
    chosen = [fidelity["slices"][s] for s in slices]
    diffs = [s["max_logit_diff"] for s in chosen if "max_logit_diff" in s]
    return {
        "cosine_worst": min(s["cosine_worst"] for s in chosen) if per_class is None else per_class,
        "per_class": per_class is not None,
        "max_logit_diff": max(diffs) if diffs else None,
    }


def _promised_for(work: dict, name: str) -> dict:
    """_promised on the slices that `name`'s graph ran on."""
    batches = np.load(work["batches"]["stress" if name.startswith("stress/") else name.split("/")[0]])
    return _promised(work["manifests"][name]["fidelity"], tuple(str(s) for s in batches["slices"]))


def _outputs(work: dict, where: str, name: str) -> np.lib.npyio.NpzFile:
    return np.load(work["tmp"] / where / f"{name.replace('/', '__')}.npz")


def _fidelity(work: dict, where: str, name: str, task: str) -> dict:
    """The report's figures for `name` run on `where`, against x86 fp32 on the same batches."""
    base = name.rsplit("/", 1)[0]
    batches = np.load(work["batches"]["stress" if base == "stress" else task])
    ref, got = _outputs(work, "x86", f"{base}/fp32"), _outputs(work, where, name)
    cos, diff, beyond = [], 0.0, 0
    promised = _promised_for(work, name)["max_logit_diff"]
    for i in range(len([k for k in batches.files if k.startswith("ids_")])):
        valid = batches[f"mask_{i}"].astype(bool)
        # the final norm's output holds real tokens only (padding is skipped), as the report reads it
        cos.append(cosines(ref[f"{FINAL_HIDDEN}_{i}"], got[f"{FINAL_HIDDEN}_{i}"]))
        for out in ("logits", "start_logits", "end_logits"):
            if f"{out}_{i}" not in ref.files or task == "feature-extraction":
                continue
            a, b = ref[f"{out}_{i}"], got[f"{out}_{i}"]
            if task == "fill-mask":
                a, b = a[batches[f"picked_{i}"]], b[batches[f"picked_{i}"]]
            elif task == "token-classification":
                a, b = a[valid], b[valid]
            elif task == "question-answering":  # (B, S): the argmax over each row's real tokens
                a, b = np.where(valid, a, -1e9), np.where(valid, b, -1e9)
                diff = max(diff, float(np.abs(a - b)[valid].max()))
                top2 = np.sort(a, axis=-1)[:, -2:]
                wide = top2[:, 1] - top2[:, 0] > 2 * promised
                beyond += int((a.argmax(-1) != b.argmax(-1))[wide].sum())
                continue
            diff = max(diff, float(np.abs(a - b).max()))
            top2 = np.sort(a, axis=-1)[:, -2:]
            wide = top2[:, 1] - top2[:, 0] > 2 * (promised or 0.0)
            beyond += int((a.argmax(-1) != b.argmax(-1))[wide].sum())
    return {"cosine_worst": float(np.concatenate(cos).min()), "max_logit_diff": diff, "disagree_beyond_margin": beyond}


def _cli_results(lines: list[dict]) -> list:
    """`mbedge run`'s lines ({"index": i, KEY: result}) as the results load() returns, in input order."""
    assert [line["index"] for line in lines] == list(range(len(lines)))
    return [next(v for k, v in line.items() if k != "index") for line in lines]


def _assert_close(a: object, b: object, tol: float, where: str) -> None:
    """Equal structure, equal strings and ints, floats within tol."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), (where, a, b)
        for k in a:
            _assert_close(a[k], b[k], tol, f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (where, a, b)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, tol, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert abs(a - b) <= tol, (where, a, b)
    else:
        assert a == b, (where, a, b)


def test_emulation_env_script_is_wired_into_ci():
    """CI runs the README's test command (scripts/test.sh), which builds the arm64 env (so these tests run
    there) after the emulator and the x86 venv, and before pytest."""

    def commands(path: Path) -> str:
        lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
        return "\n".join(line.split(" #")[0] for line in lines)  # the commands, not their comments

    assert "bash scripts/test.sh" in commands(ROOT / ".ci" / "run")
    test = commands(ROOT / "scripts" / "test.sh")
    assert test.index("emulators.sh") < test.index('pip install -q -e ".[dev]"') < test.index("arm64-env.sh")
    assert test.index("arm64-env.sh") < test.index("pytest")
