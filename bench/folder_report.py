"""The outputs of `mbedge bench MODEL_DIR ...`: the terminal table, results.md and chart.png
(results.json and the writing of all four are report.write_outputs')."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from modernbert_edge.bench.report import machine_line

COLUMNS = (
    "folder", "batch", "engine", "precision", "size MB", "load s", "cold ms", "p50 ms", "p90 ms", "p99 ms",
    "texts/s", "tokens/s", "peak RSS MB", "fidelity",
)  # fmt: skip


def fidelity_cell(f: dict | None) -> str:
    if not f:
        return "—"
    if f.get("error"):
        return f"not comparable: {f['error']}"
    metric = f["metric"]
    if metric == "reference":
        return "reference"
    if metric == "cosine":
        return f"cos {f['mean']:.5f} (worst {f['worst']:.5f})"
    counts = f" ({f['agree']}/{f['n']})" if metric != "span F1" else ""
    cell = f"{metric} {100 * f['mean']:.1f} %{counts}"
    return cell + (f", max score Δ {f['max_diff']:.2g}" if "max_diff" in f else "")


def _cells(r: dict) -> list[str]:
    def num(key: str, spec: str, scale: float = 1.0) -> str:
        return "—" if r.get(key) is None else f"{scale * r[key]:{spec}}"

    return [
        r["folder"],
        str(r["batch_size"]),
        r.get("engine") or "—",
        r.get("precision") or "—",
        num("size_mb", ".1f"),
        num("load_s", ".2f"),
        num("cold_s", ".1f", 1e3),
        num("p50_ms", ".2f"),
        num("p90_ms", ".2f"),
        num("p99_ms", ".2f"),
        "—" if r.get("texts_per_s") is None else f"{r['texts_per_s']:.1f} ± {r['texts_per_s_std']:.1f}",
        num("tokens_per_s", ".0f"),
        num("peak_rss_mb", ".0f"),
        fidelity_cell(r.get("fidelity")),
    ]


def _lines(results: dict) -> list[tuple[str, list[str] | str]]:
    """(folder, cells) per measured row, (folder, message) per failed row or untimed reference."""
    out: list[tuple[str, list[str] | str]] = []
    for r in results["rows"]:
        out.append((r["folder"], f"batch {r['batch_size']}: {r['error']}" if r["error"] else _cells(r)))
    for f in results["folders"]:
        if not any(r["folder"] == f["folder"] for r in results["rows"]):
            why = f["error"] or "reference (not timed)"
            out.append((f["folder"], why))
    return out


def table(results: dict) -> str:
    """The terminal table: aligned columns, one line per folder and batch size, a failed folder on one line."""
    lines = _lines(results)
    rows = [cells for _, cells in lines if isinstance(cells, list)]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(COLUMNS)]
    right = set(range(4, len(COLUMNS) - 1))  # the numbers

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [fmt(list(COLUMNS)).rstrip()]
    for folder, cells in lines:
        out.append(fmt(cells).rstrip() if isinstance(cells, list) else f"{folder.ljust(widths[0])}  {cells}")
    return "\n".join(out)


def header(results: dict) -> list[str]:
    s = results["settings"]
    inputs = results.get("inputs") or {}
    return [
        f"Machine: {machine_line(results['machine'])}",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Task: {results.get('task')}; inputs: {inputs.get('count')} from {inputs.get('source')}; "
        f"{s['repeats']} interleaved rounds per batch size, each a pass over every input in calls of "
        f"`batch` inputs; fidelity: {results.get('measure')} against {s['reference']}.",
    ]


def markdown(results: dict) -> str:
    out = ["# mbedge bench", "", *header(results), ""]
    out.append("| " + " | ".join(COLUMNS) + " |")
    out.append("|" + "|".join("---" if i < 4 or i == len(COLUMNS) - 1 else "---:" for i in range(len(COLUMNS))) + "|")
    for folder, cells in _lines(results):
        if isinstance(cells, list):
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        else:
            out.append(f"| {folder} | {cells.replace('|', chr(92) + '|')} |" + " |" * (len(COLUMNS) - 2))
    out += [
        "",
        "Latency: one call of the task method on `batch` inputs (tokenizer, batching and post-processing "
        "included), percentiles over every call of every round. texts/s and tokens/s: a round's texts (tokens) "
        "over its summed call time, median ± standard deviation over rounds. Cold: the first call after "
        "loading. Each folder and batch size runs in its own process: load s and peak RSS are that "
        "process's. The raw seconds of every call are in results.json.",
        "",
    ]
    if results.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return "\n".join(out)


def _score(f: dict | None) -> float | None:
    if not f or f.get("error") or f["metric"] == "reference":
        return 1.0 if f and f["metric"] == "reference" else None
    return f["mean"]


def chart(results: dict, path: Path, log: Callable[[str], None] = print) -> Path | None:
    """Two panels: latency p50 against tokens/s (a line per folder through its batch sizes), and
    fidelity against tokens/s at the largest batch size each folder ran."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("chart skipped: matplotlib is not installed (pip install matplotlib)")
        return None
    rows = [r for r in results["rows"] if not r["error"] and r.get("p50_ms")]
    if not rows:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    for folder in dict.fromkeys(r["folder"] for r in rows):
        mine = sorted((r for r in rows if r["folder"] == folder), key=lambda r: r["batch_size"])
        xs, ys = [r["tokens_per_s"] for r in mine], [r["p50_ms"] for r in mine]
        left.plot(xs, ys, marker="o", label=folder)
        for r in mine:
            left.annotate(
                f"×{r['batch_size']}",
                (r["tokens_per_s"], r["p50_ms"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        last = mine[-1]
        score = _score(last.get("fidelity"))
        if score is not None:
            right.scatter([last["tokens_per_s"]], [score], label=f"{folder} (×{last['batch_size']})")
            right.annotate(folder, (last["tokens_per_s"], score), fontsize=7, xytext=(3, 3), textcoords="offset points")
    left.set_xlabel("tokens/s (median round)")
    left.set_ylabel("latency p50 per call, ms")
    left.set_yscale("log")
    left.set_title("latency against throughput (points: batch sizes)")
    left.legend(fontsize=8)
    right.set_xlabel("tokens/s at the largest batch size")
    right.set_ylabel(results.get("measure") or "fidelity")
    right.set_title(f"fidelity against {results['settings']['reference']}")
    if right.collections:
        right.legend(fontsize=8)
    fig.suptitle(results["machine"]["cpu"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
