"""Build an offline English corpus from the Python documentation shipped in a Debian package.

    python scripts/make_corpus.py --out corpus

Downloads the HTML docs with `apt-get download` (no root install; the .deb is unpacked with
`dpkg-deb -x` into a temporary folder), keeps the prose paragraphs of each page's main body,
dedupes them, holds out whole documents, shuffles with a fixed seed and writes
`corpus/train.txt` and `corpus/heldout.txt`, one paragraph per line, plus `corpus/meta.json`.
The text is the Python documentation, (c) Python Software Foundation, under the PSF licence.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from html.parser import HTMLParser
from pathlib import Path

# Debian packages tried in order; the first that downloads and holds HTML pages wins.
DOC_PACKAGES = ("python3.11-doc", "python3.13-doc", "python3.12-doc", "python3-doc")
# Pages that are indexes or changelogs rather than prose.
SKIP_PAGES = re.compile(r"(genindex|py-modindex|search|changelog|contents|copyright|license)[^/]*\.html$")
# Elements whose text is code, navigation or chrome, never prose.
SKIP_TAGS = {"pre", "script", "style", "nav", "form", "table"}
SKIP_CLASSES = {"highlight", "related", "sphinxsidebar", "footer", "headerlink", "doctest", "linenos"}
# Paragraph-level elements: each one that directly holds text becomes one line.
BLOCK_TAGS = {"p", "li", "dd", "dt", "h1", "h2", "h3", "h4", "blockquote", "div", "section", "td"}
VOID_TAGS = {"br", "img", "hr", "input", "meta", "link", "wbr", "col", "area", "base", "source"}
MIN_WORDS = 5


class _ProseParser(HTMLParser):
    """Collects the prose paragraphs inside `<div role="main">`, skipping code and chrome."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._stack: list[tuple[str, bool]] = []  # (tag, opens a skipped region)
        self._main_depth = -1  # stack depth of the main body div; -1 until found, -2 once closed
        self._skip_depth = 0  # how many open skipped regions enclose the cursor
        self._buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID_TAGS:
            return
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        skip = tag in SKIP_TAGS or bool(classes & SKIP_CLASSES)
        if tag in BLOCK_TAGS:
            self._flush()
        if self._main_depth < 0 and a.get("role") == "main":
            self._main_depth = len(self._stack)
        self._stack.append((tag, skip))
        self._skip_depth += skip

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_TAGS or not any(t == tag for t, _ in self._stack):
            return
        while self._stack:  # close implicitly closed children too (<p> inside <li> etc.)
            t, skip = self._stack.pop()
            self._skip_depth -= skip
            if t in BLOCK_TAGS:
                self._flush()
            if len(self._stack) == self._main_depth:
                self._flush()
                self._main_depth = -2  # main body closed: ignore the rest of the page
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._main_depth >= 0 and self._skip_depth == 0:
            self._buf.append(data)

    def _flush(self) -> None:
        text = " ".join("".join(self._buf).split())
        self._buf.clear()
        if is_prose(text):
            self.paragraphs.append(text)


def is_prose(text: str) -> bool:
    """True for lines that read as English sentences rather than code, signatures or link lists."""
    words = text.split()
    if len(words) < MIN_WORDS:
        return False
    letters = sum(c.isalpha() or c.isspace() for c in text)
    if letters < 0.75 * len(text):
        return False
    return text[-1] in ".:?!)\"'" and text[0].isupper()


def page_paragraphs(html: str) -> list[str]:
    """The prose paragraphs of one Sphinx HTML page."""
    parser = _ProseParser()
    parser.feed(html)
    parser.close()
    return parser.paragraphs


def download_docs(workdir: Path) -> tuple[str, Path]:
    """Download and unpack the first available Python doc package; return (package, html root)."""
    for package in DOC_PACKAGES:
        got = subprocess.run(["apt-get", "download", package], cwd=workdir, capture_output=True, text=True)
        debs = sorted(workdir.glob(f"{package}_*.deb"))
        if got.returncode != 0 or not debs:
            continue
        unpacked = workdir / package
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(unpacked)], check=True)
        roots = [p for p in unpacked.glob("usr/share/doc/*/html") if not p.is_symlink() and p.is_dir()]
        if roots and any(roots[0].rglob("*.html")):
            return debs[-1].name, roots[0]
    sys.exit(
        f"None of {', '.join(DOC_PACKAGES)} could be downloaded: run `apt-get update` and check that "
        "a Debian package source is reachable."
    )


def read_documents(root: Path) -> dict[str, list[str]]:
    """Map each HTML page (relative path) to its prose paragraphs."""
    docs: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.html")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("_") or SKIP_PAGES.search(rel):
            continue
        paragraphs = page_paragraphs(path.read_text(encoding="utf-8", errors="replace"))
        if paragraphs:
            docs[rel] = paragraphs
    return docs


def split_documents(docs: dict[str, list[str]], heldout_frac: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out whole documents, dedupe paragraphs (held-out copies of train lines go), shuffle."""
    names = sorted(docs)
    rng = random.Random(seed)
    rng.shuffle(names)
    n_held = max(1, round(heldout_frac * len(names)))
    held_names, train_names = names[:n_held], names[n_held:]
    seen: set[str] = set()
    train = _dedupe((p for n in train_names for p in docs[n]), seen)
    heldout = _dedupe((p for n in held_names for p in docs[n]), seen)
    rng.shuffle(train)
    rng.shuffle(heldout)
    return train, heldout


def _dedupe(paragraphs: Iterable[str], seen: set[str]) -> list[str]:
    out = []
    for p in paragraphs:
        key = p.lower()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def write_lines(path: Path, lines: list[str]) -> str:
    """Write one paragraph per line; return the file's sha256."""
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def make_corpus(out: Path, heldout_frac: float = 0.02, seed: int = 0) -> dict:
    """Build `out/train.txt`, `out/heldout.txt` and `out/meta.json`; return the metadata."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        deb, root = download_docs(Path(tmp))
        docs = read_documents(root)
    train, heldout = split_documents(docs, heldout_frac, seed)
    meta = {
        "source": f"Debian package {deb} (Python documentation HTML)",
        "licence": "PSF-2.0 (Python Software Foundation License); (c) Python Software Foundation",
        "documents": len(docs),
        "heldout_frac": heldout_frac,
        "seed": seed,
        "train": {"lines": len(train), "words": sum(len(p.split()) for p in train)},
        "heldout": {"lines": len(heldout), "words": sum(len(p.split()) for p in heldout)},
    }
    meta["train"]["sha256"] = write_lines(out / "train.txt", train)
    meta["heldout"]["sha256"] = write_lines(out / "heldout.txt", heldout)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("corpus"))
    ap.add_argument("--heldout-frac", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    meta = make_corpus(args.out, args.heldout_frac, args.seed)
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
