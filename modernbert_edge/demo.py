"""`mbedge demo`: the whole pipeline, offline, on the bundled modernbert-mini checkpoint.

export (checked against PyTorch when it is installed) -> int8 quantization with the fidelity
gate -> fill-mask and sentence similarity from the fp32 and the int8 model -> a speed line.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from modernbert_edge.cli_options import Threads
from modernbert_edge.errors import UserError

BUNDLED = Path(__file__).parent / "assets" / "modernbert-mini"

FILL_MASK_EXAMPLES = [
    "Changed in version 3.[MASK]: Added the key parameter.",
    "This function takes two [MASK] and returns their sum.",
    "If the file does not exist, a [MASK] is raised.",
    "See the [MASK] module for more details.",
]

SIMILARITY_EXAMPLES = [
    "Open the file and read its contents into a string.",
    "Read all the text from a file.",
    "The list is sorted in place and returns None.",
    "Sorting a list changes the order of its items.",
]


def bundled_checkpoint() -> Path:
    if not (BUNDLED / "model.safetensors").is_file():
        raise UserError(f"the bundled checkpoint is missing from {BUNDLED}; reinstall modernbert-edge.")
    return BUNDLED


def _torch_fill_mask(checkpoint: Path, texts: list[str]) -> Callable[[], object] | None:
    """A PyTorch fill-mask call on the same texts, when torch and transformers are installed."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    tok = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
    model = transformers.ModernBertForMaskedLM.from_pretrained(str(checkpoint)).eval()
    batch = tok(texts, return_tensors="pt", padding=True)

    def run() -> object:
        with torch.no_grad():
            return model(**batch).logits

    return run


def run_demo(
    out_dir: Path | None, threads: int | None, log: Callable[[str], None], echo: Callable[[str], None]
) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UserError("mbedge demo exports and quantizes a model: pip install 'modernbert-edge[export]'.") from None
    from modernbert_edge.export.exporter import export
    from modernbert_edge.quantize.quantizer import quantize
    from modernbert_edge.runtime import load
    from modernbert_edge.runtime.options import check_threads

    check_threads(threads)  # before minutes of export and quantization, not at load()
    t_start = time.perf_counter()
    src = bundled_checkpoint()
    with tempfile.TemporaryDirectory(prefix="mbedge-demo-") as tmp:
        work = Path(out_dir) if out_dir is not None else Path(tmp)
        folders = {}
        for task in ("fill-mask", "feature-extraction"):
            fp32, int8 = work / f"{task}-fp32", work / f"{task}-int8"
            log(f"[demo] export {task} -> {fp32}")
            export(str(src), fp32, task=task, overwrite=True, log=log)
            log(f"[demo] quantize int8 -> {int8}")
            quantize(fp32, int8, mode="int8", overwrite=True, log=log)
            folders[task] = (fp32, int8)

        models = {
            (task, precision): load(folder, threads=threads)
            for task, pair in folders.items()
            for precision, folder in zip(("fp32", "int8"), pair, strict=True)
        }

        echo("\nFill-mask (top 3; fp32 | int8):")
        fp32_preds = models["fill-mask", "fp32"].fill_mask(FILL_MASK_EXAMPLES, top_k=3)
        int8_preds = models["fill-mask", "int8"].fill_mask(FILL_MASK_EXAMPLES, top_k=3)
        for text, a, b in zip(FILL_MASK_EXAMPLES, fp32_preds, int8_preds, strict=True):
            echo(f"  {text}")
            fmt = lambda preds: ", ".join(f"{p['token_str'].strip()!r} {p['score']:.2f}" for p in preds)  # noqa: E731
            echo(f"    fp32: {fmt(a)}")
            echo(f"    int8: {fmt(b)}")

        echo("\nSentence similarity (cosine of mean-pooled embeddings; fp32 | int8):")
        emb = {p: models["feature-extraction", p].embed(SIMILARITY_EXAMPLES) for p in ("fp32", "int8")}
        sims = {p: e @ e.T for p, e in emb.items()}
        for i in range(len(SIMILARITY_EXAMPLES)):
            for j in range(i + 1, len(SIMILARITY_EXAMPLES)):
                echo(
                    f"  {sims['fp32'][i, j]:.3f} | {sims['int8'][i, j]:.3f}  "
                    f"{SIMILARITY_EXAMPLES[i][:34]!r} ~ {SIMILARITY_EXAMPLES[j][:34]!r}"
                )

        texts = FILL_MASK_EXAMPLES * 8
        calls = {p: (lambda m=models["fill-mask", p]: m.fill_mask(texts, top_k=1)) for p in ("fp32", "int8")}
        torch_call = _torch_fill_mask(src, texts)
        if torch_call is not None:
            calls["pytorch"] = torch_call
        from modernbert_edge.timing import summarize, time_calls

        ms = {name: summarize(t)["median_ms"] for name, t in time_calls(calls, repeats=5).items()}
        line = ", ".join(f"{name} {v:.1f} ms" for name, v in ms.items())
        ratio = ms["fp32"] / ms["int8"]
        extra = f"; int8 is {ms['pytorch'] / ms['int8']:.1f}x PyTorch" if "pytorch" in ms else ""
        echo(f"\nSpeed, fill-mask on {len(texts)} texts: {line} (int8 {ratio:.1f}x fp32{extra})")
        echo(f"Done in {time.perf_counter() - t_start:.1f} s." + (f" Models in {work}." if out_dir else ""))


def demo_cmd(
    out: Annotated[Path | None, typer.Option(help="Keep the exported models in this folder.")] = None,
    threads: Threads = None,
) -> None:
    """Export, quantize and run the bundled modernbert-mini model, offline (well under a minute)."""
    run_demo(out, threads, log=lambda m: typer.echo(m, err=True), echo=typer.echo)
