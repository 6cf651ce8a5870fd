"""Writing a quantized model folder: the int8 graph, its source's config, tokenizer and
sentence-transformers modules, and the new manifest, into a claimed OutputFolder (atomically)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from modernbert_edge.export.sentence import copy_sentence
from modernbert_edge.folders import save_model
from modernbert_edge.manifest import MODEL_FILE, write_manifest

if TYPE_CHECKING:
    import onnx

    from modernbert_edge.folders import OutputFolder


def write_quantized(
    target: OutputFolder,
    qmodel: onnx.ModelProto,
    model_dir: Path,
    source_files: Sequence[str],
    sentence: dict | None,
    manifest: dict,
) -> None:
    """qmodel as MODEL_FILE, the `source_files` model_dir has, its sentence modules and `manifest`."""

    def fill(tmp: Path) -> None:
        save_model(qmodel, tmp / MODEL_FILE)
        for f in source_files:
            if (model_dir / f).is_file():
                shutil.copy2(model_dir / f, tmp / f)
        copy_sentence(model_dir, tmp, sentence)  # sentence-transformers modules, as exported
        write_manifest(tmp, manifest)

    target.write(fill)
