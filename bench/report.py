"""The bench's outputs: results.json, results.md (a table per job), chart.png, and the target checks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def machine_line(m: dict) -> str:
    v = m["versions"]
    vers = ", ".join(f"{k} {v[k]}" for k in ("onnxruntime", "openvino", "torch", "transformers", "optimum") if k in v)
    threads = "default (one per physical core)" if m["threads"] in (None, 0) else m["threads"]
    return (
        f"{m['cpu_line']}; {m['logical_cores']} logical cores, {threads} threads per system; "
        f"load average {m.get('load_average_start')} at start, {m.get('load_average')} at end; {vers}; {m['date']}"
    )


def _fmt(x: object, spec: str = ".1f", suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


def _fidelity_cell(f: dict | None) -> str:
    if not f:
        return "—"
    if f["metric"] == "reference":
        return "reference"
    if f["metric"] == "cosine":
        return f"cos {f['mean']:.4f} (worst {f['worst']:.4f})"
    if f["metric"] == "top-1 agreement":
        return f"top-1 {100 * f['mean']:.1f} %"
    return f"labels {100 * f['mean']:.1f} %, max Δ {f['max_abs_diff']:.2e}"


def markdown(results: dict) -> str:
    out = ["# mbedge bench", ""]
    if results.get("partial"):
        out += ["**Partial results: the run has not finished (or was interrupted).**", ""]
    out += [f"Machine: {machine_line(results['machine'])}", ""]
    out += [f"Command: `{results['command']}`", ""]
    for job in results["jobs"]:
        rows = [r for r in results["rows"] if r["job"] == job]
        if not rows:
            continue
        out += [f"## {job}", ""]
        out.append(
            "| shape | system | median ms | p90 ms | tokens/s | × PyTorch | peak RSS MB | size MB | load s | fidelity |"
        )
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in rows:
            if r.get("error"):
                out.append(f"| {r['shape']} | {r['label']} | failed: {r['error'][:120]} | | | | | | | |")
                continue
            speed = r.get("speedup_vs_pytorch")
            note = " ¹" if r.get("note") else ""
            out.append(
                f"| {r['shape']} | {r['label']}{note} | {_fmt(r.get('median_ms'))} | {_fmt(r.get('p90_ms'))} | "
                f"{_fmt(r.get('tokens_per_s'), '.0f')} | {_fmt(speed, '.2f', '×')} | "
                f"{_fmt(r.get('peak_rss_mb'), '.0f')} | "
                f"{_fmt(r.get('size_mb'))} | {_fmt(r.get('load_s'), '.2f')} | {_fidelity_cell(r.get('fidelity'))} |"
            )
        if any(r.get("note") for r in rows):
            out += ["", "¹ " + next(r["note"] for r in rows if r.get("note")) + "."]
        out.append("")
    if results.get("targets"):
        out += ["## Targets", ""] + [f"- {t['line']}" for t in results["targets"]] + [""]
    if results.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return "\n".join(out)


# ── targets ───────────────────────────────────────────────────────────────────────────────────────


def _row(rows: list[dict], job: str, shape: str, system: str) -> dict | None:
    for r in rows:
        if r["job"] == job and r["shape"] == shape and r["system"] == system and not r.get("error"):
            return r
    return None


def _ratio(a: dict | None, b: dict | None, key: str = "median_ms") -> float | None:
    """b[key] / a[key]: how many times faster a is than b (for times)."""
    if not a or not b or not a.get(key) or not b.get(key):
        return None
    return b[key] / a[key]


def check_targets(rows: list[dict]) -> list[dict]:
    """The benchmark's targets, each met / NOT met / not measured, with the measured ratio."""
    targets: list[dict] = []

    def add(name: str, value: float | None, goal: float, unit: str = "×", extra: str = "", op: str = ">=") -> None:
        if value is None:
            status = "not measured"
            shown = ""
        else:
            ok = value >= goal if op == ">=" else value <= goal
            status = "met" if ok else "NOT met"
            shown = f" (measured {value:.2f}{unit}{extra})"
        line = f"{name}: {status}{shown}"
        targets.append({"target": name, "value": value, "goal": goal, "status": status, "line": line})

    emb = "embeddings"
    add(
        "embeddings int8 ≥ 6× PyTorch eager at 8×128",
        _ratio(_row(rows, emb, "8x128", "ours-int8"), _row(rows, emb, "8x128", "pytorch")),
        6,
    )
    add(
        "embeddings int8 ≥ 4× PyTorch eager at 1×2048",
        _ratio(_row(rows, emb, "1x2048", "ours-int8"), _row(rows, emb, "1x2048", "pytorch")),
        4,
    )
    shapes = sorted({r["shape"] for r in rows if r["job"] == emb})
    per_shape = {
        s: _ratio(_row(rows, emb, s, "ours-int8"), _row(rows, emb, s, "trace-int8"))
        for s in shapes
        if _row(rows, emb, s, "trace-int8") or _row(rows, emb, s, "ours-int8")
    }
    measured = {s: v for s, v in per_shape.items() if v is not None}
    worst = min(measured, key=measured.get) if measured else None
    missing = sorted(s for s in per_shape if per_shape[s] is None)
    extra = f", worst at {worst}" if worst else ""
    if missing:
        extra += f"; not measured at {', '.join(missing)}"
    add("embeddings int8 ≥ 2× traced int8 at every shape", measured.get(worst) if worst else None, 2, extra=extra)
    add(
        "fill-mask int8 ≥ 8× PyTorch eager at 8×128",
        _ratio(_row(rows, "fill-mask", "8x128", "ours-int8"), _row(rows, "fill-mask", "8x128", "pytorch")),
        8,
    )
    big, ref = _row(rows, emb, "1x8192", "ours-int8"), _row(rows, emb, "1x8192", "pytorch")
    add("embeddings 1×8192 int8 peak RSS ≤ 1.5 GB", big.get("peak_rss_mb") / 1000 if big else None, 1.5, " GB", op="<=")
    add("embeddings 1×8192 int8 faster than PyTorch eager", _ratio(big, ref), 1.0)
    for job in ("embeddings", "fill-mask", "classification"):
        a, b = _row(rows, job, "mixed", "ours-int8"), _row(rows, job, "mixed", "ours-int8-padded")
        if a or b or job == emb:
            value = a["tokens_per_s"] / b["tokens_per_s"] if a and b and b.get("tokens_per_s") else None
            add(f"{job} mixed batch int8 tokens/s ≥ 1.5× same graph, input order, padded", value, 1.5)
    full, bound = _row(rows, emb, "8x128", "ours-int8"), _row(rows, emb, "8x128", "int8-gemm-bound")
    add(
        "embeddings int8 full model ≤ 1.5× its int8-GEMM lower bound at 8×128",
        full["median_ms"] / bound["median_ms"] if full and bound and bound.get("median_ms") else None,
        1.5,
        op="<=",
    )
    return targets


# ── chart ─────────────────────────────────────────────────────────────────────────────────────────


def chart(results: dict, path: Path, log: Callable[[str], None] = print) -> Path | None:
    """Grouped bars: speed-up over PyTorch per shape (x) and system (bars), one panel per job."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("chart skipped: matplotlib is not installed (pip install matplotlib)")
        return None
    jobs = [j for j in results["jobs"] if any(r["job"] == j for r in results["rows"])]
    if not jobs:
        return None
    fig, axes = plt.subplots(len(jobs), 1, figsize=(10, 3.6 * len(jobs)), squeeze=False)
    for ax, job in zip(axes[:, 0], jobs, strict=True):
        rows = [r for r in results["rows"] if r["job"] == job and r["system"] not in ("pytorch", "int8-gemm-bound")]
        shapes = list(dict.fromkeys(r["shape"] for r in rows))
        systems = list(dict.fromkeys(r["system"] for r in rows))
        width = 0.8 / max(len(systems), 1)
        for k, system in enumerate(systems):
            values = []  # NaN (no bar, no label) where the system did not run at that shape
            for s in shapes:
                r = _row(rows, job, s, system)
                values.append(r.get("speedup_vs_pytorch") or float("nan") if r else float("nan"))
            xs = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(shapes))]
            bars = ax.bar(xs, values, width, label=system)
            ax.bar_label(bars, labels=["" if v != v else f"{v:.1f}" for v in values], fontsize=7)
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(shapes)), shapes)
        ax.set_ylabel("speed-up over PyTorch eager")
        ax.set_title(f"{job} ({results['machine']['threads']} threads)")
        ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(
    results: dict,
    out_dir: Path,
    log: Callable[[str], None] = print,
    markdown: Callable[[dict], str] = markdown,
    chart: Callable[[dict, Path, Callable[[str], None]], Path | None] = chart,
) -> dict[str, Path]:
    """results.json, results.md and chart.png (skipped, saying so, without matplotlib) in out_dir;
    markdown and chart default to the peer race's (`mbedge bench MODEL_DIR` passes folder_report's)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / "results.json", "md": out_dir / "results.md"}
    files["json"].write_text(json.dumps(results, indent=2) + "\n")
    files["md"].write_text(markdown(results))
    png = chart(results, out_dir / "chart.png", log)
    if png:
        files["png"] = png
    return files
