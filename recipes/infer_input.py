"""Input files of batch inference: listing and checking them, and reading them in blocks of rows.

A file is read as consecutive blocks of `block_rows` rows (non-blank JSONL lines, CSV/TSV
records, Parquet rows), so a block is the same on every run with the same input. A block is the
unit of work and of output: one output shard each, which is what lets a rerun skip committed blocks.
Bad rows stay in their block with the reason, so they are reported exactly once too.
"""

import csv
import json
import os
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.compression import compr
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import infer_compression

from recipes import storage
from recipes.config import data_format
from recipes.errors import RecipeError

PEEK_LINES = 100  # a JSONL file must show a JSON object this early, or it is not JSON lines


@dataclass(frozen=True)
class Columns:
    text: str
    pair: Optional[str]
    id: Optional[str]  # an id column asked for by name; None: "id" where a file has one
    names: Optional[Tuple[str, ...]] = None  # column names of header-less csv/tsv files


@dataclass(frozen=True)
class InputFile:
    index: int  # position in the sorted file list: names the output shards
    url: str
    name: str  # relative to the input's top directory: in generated ids and error reports
    format: str
    size: int
    id_column: Optional[str]  # None: ids are "<name>:<line>"


@dataclass
class RawBlock:
    """Consecutive rows of one file, parsed but not yet encoded; `errors[i]` is None for a good row."""

    index: int
    lines: List[int] = field(default_factory=list)  # 1-based line (text formats) or row (Parquet)
    ids: List[Optional[str]] = field(default_factory=list)
    texts: List[Optional[str]] = field(default_factory=list)
    pairs: List[Optional[str]] = field(default_factory=list)
    errors: List[Optional[Tuple[str, str]]] = field(default_factory=list)  # (reason, detail)
    bytes: int = 0  # input bytes this block covers (progress)

    def __len__(self) -> int:
        return len(self.lines)


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _known(path: str, fmt: Optional[str]) -> bool:
    base = path.rstrip("/").rsplit("/", 1)[-1]
    return not base.startswith(("_", ".")) and data_format(fmt, path) is not None


def list_files(spec: str, fmt: Optional[str], columns: Columns) -> List[InputFile]:
    """The input files of a path, glob or directory, sorted, each checked for the needed columns."""
    try:
        fs, path = storage.filesystem(spec)
    except (ImportError, ValueError) as e:
        raise RecipeError(
            f"input={spec}: cannot open ({e}); use a local path or an fsspec URL such as gs://bucket/dir"
        ) from None
    try:
        if _is_glob(path):
            found = {p: info for p, info in fs.glob(path, detail=True).items() if info["type"] == "file"}
            if not found:
                raise RecipeError(f"input={spec}: no files match")
        elif fs.isdir(path):
            found = {p: info for p, info in fs.find(path, detail=True).items() if _known(p, fmt)}
            if not found:
                raise RecipeError(
                    f"input={spec}: no .jsonl, .csv, .tsv or .parquet files in this directory "
                    "(set format=... for other names)"
                )
        elif fs.isfile(path):
            found = {path: fs.info(path)}
        else:
            raise RecipeError(f"input={spec}: no such file or directory")
    except PermissionError:
        raise RecipeError(f"input={spec}: permission denied") from None
    paths = sorted(found)
    top = os.path.commonpath([p.rsplit("/", 1)[0] if "/" in p else "" for p in paths])
    files = []
    for index, p in enumerate(paths):
        url = p if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(p)
        name = p[len(top) :].lstrip("/") if top else p
        found_fmt = data_format(fmt, p)
        if found_fmt is None:
            raise RecipeError(
                f"{url}: unknown file format; expected .jsonl, .csv, .tsv or .parquet (optionally .gz, .bz2, .xz), "
                "or set format=..."
            )
        if found_fmt == "parquet" and infer_compression(p):
            raise RecipeError(
                f"{url}: compressed Parquet files cannot be streamed; "
                "decompress it (Parquet compresses its pages itself)"
            )
        present = peek_columns(url, found_fmt, columns)
        id_column = _check_columns(url, present, columns)
        files.append(InputFile(index, url, name, found_fmt, int(found[p].get("size") or 0), id_column))
    return files


def _check_columns(url: str, present: Sequence[str], columns: Columns) -> Optional[str]:
    for key, col in (("text_column", columns.text), ("text_pair_column", columns.pair), ("id_column", columns.id)):
        if col is not None and col not in present:
            raise RecipeError(f"{url}: no column {col!r} (columns: {', '.join(map(str, present))}); set {key}=...")
    if columns.id is not None:
        return columns.id
    return "id" if "id" in present else None


def _open(url: str):
    """(raw file, decompressed stream): progress is counted in raw bytes."""
    with storage.reading(url):
        raw = fsspec.open(url, "rb").open()
    comp = infer_compression(url)
    return raw, (compr[comp](raw, mode="rb") if comp else raw)


def peek_columns(url: str, fmt: str, columns: Columns) -> List[str]:
    """The column names of a file from its first record, header or schema; a one-line error if unreadable."""
    raw, stream = _open(url)
    try:
        with raw:
            if fmt == "parquet":
                try:
                    schema = pq.ParquetFile(raw).schema_arrow
                except (pa.ArrowException, OSError) as e:
                    raise RecipeError(f"{url}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
                for col in (columns.text, columns.pair):
                    if col in schema.names and not (
                        pa.types.is_string(schema.field(col).type) or pa.types.is_large_string(schema.field(col).type)
                    ):
                        raise RecipeError(f"{url}: column {col!r} holds {schema.field(col).type}, expected strings")
                return schema.names
            if fmt == "jsonl":
                for n, line in enumerate(stream, 1):
                    if n > PEEK_LINES:
                        break
                    try:
                        row = json.loads(line)
                    except (ValueError, UnicodeDecodeError):
                        continue
                    if isinstance(row, dict):
                        return list(row)
                raise RecipeError(
                    f"{url}: no JSON object in its first {PEEK_LINES} lines; is it JSON lines (one object per line)?"
                )
            if columns.names is not None:
                return list(columns.names)
            header = next(csv.reader(_text_lines(stream), delimiter=_SEP[fmt], quoting=_QUOTING[fmt]), None)
            if header is None:
                return []
            return header
    except (OSError, EOFError) as e:
        raise RecipeError(
            f"{url}: cannot read ({str(e) or type(e).__name__}); is it really what its extension says?"
        ) from None


_SEP = {"csv": ",", "tsv": "\t"}
_QUOTING = {"csv": csv.QUOTE_MINIMAL, "tsv": csv.QUOTE_NONE}  # GLUE-style TSV: quotes are text, as in training


def _text_lines(stream) -> Iterator[str]:
    """Decoded lines; bytes that are not UTF-8 become lone surrogates, so the row can be reported, not the file."""
    first = True
    for line in stream:
        text = line.decode("utf-8", errors="surrogateescape")
        if first and text.startswith("\ufeff"):
            text = text[1:]
        first = False
        yield text


def _not_utf8(value: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in value)


def _text_error(value, column: str) -> Optional[Tuple[str, str]]:
    if value is None:
        return "missing_text", f"no value in column {column!r}"
    if not isinstance(value, str):
        return "not_string", f"column {column!r} holds {type(value).__name__} {str(value)[:40]!r}, expected a string"
    if not value.strip():
        return "blank_text", f"blank text in column {column!r}"
    return None


class BlockReader:
    """Reads one file as RawBlocks; `skip` holds the block indices already committed (parsed, not returned)."""

    def __init__(self, file: InputFile, columns: Columns, block_rows: int):
        self.file, self.columns, self.block_rows = file, columns, block_rows

    def blocks(self, skip=frozenset()) -> Iterator[RawBlock]:
        raw, stream = _open(self.file.url)
        with raw:
            if self.file.format == "parquet":
                parquet = pq.ParquetFile(raw)
                rows = self._parquet_rows(parquet)
                position = lambda: self.file.size * seen // max(parquet.metadata.num_rows, 1)  # noqa: E731 (reads seek about)
            else:
                rows = self._text_rows(stream)
                position = lambda: min(raw.tell(), self.file.size)  # noqa: E731
            block, last_pos, seen = RawBlock(0), 0, 0
            for row in rows:
                seen += 1
                if block.index not in skip:
                    self._add(block, *row)
                else:
                    block.lines.append(row[0])  # counted, so the block ends where it always does
                if len(block) == self.block_rows:
                    pos = position()
                    if block.index not in skip:
                        block.bytes = pos - last_pos
                        yield block
                    block, last_pos = RawBlock(block.index + 1), pos
            if len(block) and block.index not in skip:
                block.bytes = max(self.file.size - last_pos, 0)
                yield block

    def _add(self, block: RawBlock, line: int, record, error: Optional[Tuple[str, str]]) -> None:
        cols = self.columns
        row_id = None
        if error is None:
            error = _text_error(record.get(cols.text), cols.text)
        if error is None and cols.pair is not None:
            error = _text_error(record.get(cols.pair), cols.pair)
        if self.file.id_column is not None and record is not None:
            value = record.get(self.file.id_column)
            row_id = None if value is None or value == "" else str(value)
            if row_id is None and error is None:
                error = "missing_id", f"no value in column {self.file.id_column!r}"
        elif self.file.id_column is None:
            row_id = f"{self.file.name}:{line}"
        ok = error is None
        block.lines.append(line)
        block.ids.append(row_id)
        block.texts.append(record[cols.text] if ok else None)
        block.pairs.append(record[cols.pair] if ok and cols.pair is not None else None)
        block.errors.append(error)

    def _text_rows(self, stream) -> Iterator[Tuple[int, Optional[dict], Optional[Tuple[str, str]]]]:
        if self.file.format == "jsonl":
            yield from self._jsonl_rows(stream)
        else:
            yield from self._delimited_rows(stream)

    def _jsonl_rows(self, stream):
        for n, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield n, None, ("invalid_utf8", f"not valid UTF-8 (byte 0x{line[e.start]:02x})")
                continue
            try:
                record = json.loads(text)
            except ValueError as e:
                yield (
                    n,
                    None,
                    ("invalid_json", f"invalid JSON ({getattr(e, 'msg', e)}: column {getattr(e, 'colno', '?')})"),
                )
                continue
            if not isinstance(record, dict):
                yield n, None, ("not_an_object", f"expected a JSON object, got {type(record).__name__}")
                continue
            yield n, record, None

    def _delimited_rows(self, stream):
        fmt = self.file.format
        csv.field_size_limit(2**31 - 1)  # an over-long text is truncated and counted, not a parse error
        reader = csv.reader(_text_lines(stream), delimiter=_SEP[fmt], quoting=_QUOTING[fmt])
        names = list(self.columns.names) if self.columns.names is not None else None
        start = 1
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield start, None, ("invalid_csv", f"cannot parse as {fmt} ({e})")
                start = reader.line_num + 1
                continue
            line, start = start, reader.line_num + 1
            if not fields:  # a blank line
                continue
            if names is None:
                names = fields
                continue
            if len(fields) != len(names):
                yield line, None, ("field_count", f"{len(fields)} fields, expected {len(names)}")
                continue
            if any(_not_utf8(f) for f in fields):
                yield line, None, ("invalid_utf8", "not valid UTF-8")
                continue
            yield line, dict(zip(names, fields)), None

    def _parquet_rows(self, parquet: pq.ParquetFile):
        cols = self.columns
        wanted = [c for c in (cols.text, cols.pair, self.file.id_column) if c is not None]
        n = 0
        for batch in parquet.iter_batches(batch_size=self.block_rows, columns=wanted):
            values = {c: batch.column(c).to_pylist() for c in wanted}
            for i in range(batch.num_rows):
                n += 1
                yield n, {c: values[c][i] for c in wanted}, None
