"""Inputs of `mbedge batch`: Parquet, JSONL and CSV files, cut into shards of fixed row ranges.

    find_inputs(INPUT)          a file, a folder (searched recursively) or a glob -> files, sorted
    plan_shards(files, rows)    each file's rows [0, n) cut into [k * rows, (k + 1) * rows): Shard
    read_shard(shard, ...)      a shard's ids and texts; a row that cannot be read keeps its place

A shard's name comes from its file's path and its first row, so a rerun finds the same shards,
and the output of a finished shard is its own Parquet file under that name. pyarrow is imported
inside the functions (it comes with the `ray` extra).
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from modernbert_edge.errors import UserError

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
DEFAULT_SHARD_ROWS = 4096


@dataclass(frozen=True)
class Shard:
    path: str  # the input file, absolute
    fmt: str  # parquet, jsonl or csv
    start: int  # first row of the file in this shard (0-based)
    stop: int  # one past its last row
    offset: int  # JSONL: byte offset of row `start`; 0 otherwise
    name: str  # output file name: <stem>-<path hash>-<start>.parquet
    source: str  # the file as the output's `source` column names it (relative to INPUT)


@dataclass(frozen=True)
class Row:
    """One input row as read: its id (None without one), its value, or why it could not be read."""

    id: object
    value: object
    error: str | None = None


def find_inputs(spec: str | Path) -> tuple[list[Path], Path]:
    """The input files (absolute, sorted) and the folder their `source` names are relative to."""
    path = Path(spec)
    if path.is_file():
        files, root = [path], path.parent
    elif path.is_dir():
        files = [f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in FORMATS and not _hidden(f, path)]
        root = path
    elif glob.has_magic(str(spec)):
        files = [Path(f) for f in glob.glob(str(spec), recursive=True) if Path(f).is_file()]
        root = _glob_root(str(spec))
    else:
        raise UserError(f"input {spec} does not exist (give a file, a folder or a glob).")
    if not files:
        raise UserError(f"input {spec} matches no .parquet, .jsonl or .csv files.")
    for f in files:
        if f.suffix.lower() not in FORMATS:
            raise UserError(f"{f} is not Parquet, JSONL or CSV (by its extension; expected {', '.join(FORMATS)}).")
    return sorted(f.resolve() for f in files), root.resolve()


def _hidden(f: Path, root: Path) -> bool:
    return any(part.startswith((".", "_")) for part in f.relative_to(root).parts)


def _glob_root(pattern: str) -> Path:
    """The folders of a glob before its first wildcard."""
    fixed: list[str] = []
    for part in Path(pattern).parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def plan_shards(
    files: list[Path], root: Path, rows: int, column: str, id_column: str | None
) -> tuple[list[Shard], bool]:
    """Every file's shards, in order, and whether the rows have ids (`id_column` in every file).

    id_column None: use "id" where every Parquet / CSV file has it (JSONL rows: where present).
    A given id_column, or the text column, missing from a Parquet or CSV file is a UserError.
    """
    if rows < 1:
        raise UserError(f"--shard-rows must be at least 1, got {rows}.")
    shards: list[Shard] = []
    has_ids = True
    for path in files:
        fmt = FORMATS[path.suffix.lower()]
        if fmt == "jsonl":
            offsets = _jsonl_offsets(path, rows)
            count = offsets.pop()
        else:
            names, count = _columns_and_rows(path, fmt)
            if column not in names:
                raise UserError(f"{path} has no column {column!r} (it has {', '.join(names)}): pass --column.")
            kind = _parquet_type(path, column) if fmt == "parquet" else None
            if kind is not None and not kind.startswith(("string", "large_string", "binary", "large_binary")):
                raise UserError(f"{path}'s column {column!r} holds {kind} values, not text: pass --column naming text.")
            if id_column is not None and id_column not in names:
                raise UserError(f"{path} has no id column {id_column!r} (it has {', '.join(names)}).")
            has_ids = has_ids and "id" in names
            offsets = [0] * ((count + rows - 1) // rows)
        source = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem)[:60]
        for k, offset in enumerate(offsets):
            start = k * rows
            name = f"{stem}-{digest}-{start:012d}.parquet"
            shards.append(Shard(str(path), fmt, start, min(count, start + rows), offset, name, source))
    return shards, id_column is not None or has_ids


def _jsonl_offsets(path: Path, rows: int) -> list[int]:
    """Byte offsets of rows 0, rows, 2 * rows, ..., then the number of rows (lines; a last line need not
    end in a newline)."""
    offsets, count, position = [], 0, 0
    with path.open("rb") as f:
        for line in f:
            if count % rows == 0:
                offsets.append(position)
            position += len(line)
            count += 1
    return [*offsets, count]


def _columns_and_rows(path: Path, fmt: str) -> tuple[list[str], int]:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            f = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise UserError(f"{path} is not a readable Parquet file ({e}).") from None
        return list(f.schema_arrow.names), f.metadata.num_rows  # top-level columns, not nested leaves
    import pyarrow.csv as pcsv

    try:
        reader = pcsv.open_csv(path)
        names = list(reader.schema.names)
        return names, sum(batch.num_rows for batch in reader)
    except Exception as e:
        raise UserError(f"{path} is not a readable CSV file ({e}).") from None


def _parquet_type(path: Path, column: str) -> str:
    """The Arrow type of a Parquet file's column, as text ("string", "list<element: string>", …)."""
    import pyarrow.parquet as pq

    return str(pq.read_schema(path).field(column).type)


def read_shard(shard: Shard, column: str, id_column: str | None) -> list[Row]:
    """The shard's rows in order, exactly stop - start of them."""
    if shard.fmt == "jsonl":
        rows = _read_jsonl(shard, column, id_column)
    else:
        columns = [column] + ([id_column] if id_column and id_column != column else [])
        try:
            table = _read_parquet(shard, columns) if shard.fmt == "parquet" else _read_csv(shard, columns)
        except Exception as e:  # corrupt pages, a CSV line that does not parse: every row of the shard fails
            reason = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            n = shard.stop - shard.start
            return [Row(None, None, f"rows {shard.start + 1}-{shard.stop} could not be read ({reason}).")] * n
        texts = table.column(column).to_pylist()
        ids = table.column(id_column).to_pylist() if id_column else [None] * len(texts)
        rows = [_decoded(shard.start + k, i, t) for k, (i, t) in enumerate(zip(ids, texts, strict=True))]
    if len(rows) != shard.stop - shard.start:
        raise RuntimeError(f"{shard.path} rows {shard.start}-{shard.stop} read as {len(rows)} rows: it changed?")
    return rows


def _decoded(n: int, row_id: object, text: object) -> Row:
    """A row whose CSV fields were read as bytes: text that is not UTF-8 is an error row."""
    if isinstance(row_id, bytes):
        row_id = row_id.decode("utf-8", errors="replace")
    if not isinstance(text, bytes):
        return Row(row_id, text)
    try:
        return Row(row_id, text.decode("utf-8"))
    except UnicodeDecodeError as e:
        return Row(row_id, None, f"row {n + 1} is not UTF-8 text (byte {e.object[e.start]:#04x} at {e.start}).")


def _read_parquet(shard: Shard, columns: list[str]):  # noqa: ANN202 - pyarrow.Table
    """Only the row groups that hold [start, stop)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = pq.ParquetFile(shard.path)
    groups, first, at = [], None, 0
    for g in range(f.metadata.num_row_groups):
        n = f.metadata.row_group(g).num_rows
        if at + n > shard.start and at < shard.stop:
            groups.append(g)
            first = at if first is None else first
        at += n
    if not groups:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    table = f.read_row_groups(groups, columns=columns)
    return table.slice(shard.start - first, shard.stop - shard.start)


def _read_csv(shard: Shard, columns: list[str]):  # noqa: ANN202 - pyarrow.Table
    """Streams the file up to `stop` (CSV has no row index: prefer Parquet for large inputs)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    # bytes, decoded row by row (_decoded): one line in another encoding is one error row, not a failed job
    convert = pcsv.ConvertOptions(include_columns=columns, column_types={c: pa.binary() for c in columns})
    batches, at = [], 0
    for batch in pcsv.open_csv(shard.path, convert_options=convert):
        lo, hi = max(shard.start - at, 0), min(shard.stop - at, batch.num_rows)
        if hi > lo:
            batches.append(batch.slice(lo, hi - lo))
        at += batch.num_rows
        if at >= shard.stop:
            break
    schema = pa.schema([(c, pa.binary()) for c in columns])
    return pa.Table.from_batches(batches, schema=schema) if batches else schema.empty_table()


def _read_jsonl(shard: Shard, column: str, id_column: str | None) -> list[Row]:
    """Each line parsed on its own: a line that is not a JSON object with the text field is an error row."""
    rows = []
    with open(shard.path, "rb") as f:
        f.seek(shard.offset)
        for n in range(shard.start, shard.stop):
            line = f.readline()
            where = f"line {n + 1}"
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                rows.append(Row(None, None, f"{where} is not valid JSON ({getattr(e, 'msg', e)})."))
                continue
            except RecursionError:
                rows.append(Row(None, None, f"{where} is JSON nested too deeply to read."))
                continue
            except ValueError as e:  # an integer of more digits than Python converts
                rows.append(Row(None, None, f"{where} could not be read ({e})."))
                continue
            if not isinstance(record, dict):
                rows.append(Row(None, None, f"{where} is not a JSON object (got {type(record).__name__})."))
                continue
            key = id_column or "id"
            if column not in record:
                rows.append(Row(record.get(key), None, f"{where} has no {column!r} field."))
                continue
            rows.append(Row(record.get(key), record[column]))
    return rows
