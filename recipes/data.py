"""Reading labeled text tables, encoding them, and batching them by length."""

import csv
import io
import json
import logging
import numbers
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recipes import storage
from recipes.config import FORMATS, SPLITS
from recipes.config import data_format as data_format_of
from recipes.errors import RecipeError

log = logging.getLogger("text_recipes")


def detect_format(source: str, fmt: Optional[str]) -> str:
    if fmt and fmt not in FORMATS:
        raise RecipeError(f"data.format={fmt!r}: expected one of {', '.join(FORMATS)}")
    found = data_format_of(fmt, source)
    if found is None:
        raise RecipeError(f"{source}: unknown file format; expected .csv, .tsv, .jsonl or .parquet, or set data.format")
    return found


def _decode(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise RecipeError(
            f"{source} line {line}: not valid UTF-8 (byte 0x{raw[e.start]:02x}); re-save the file as UTF-8"
        ) from None


def read_file(source: str, cfg) -> pd.DataFrame:
    """One table from a local path or fsspec URL, as written: no type guessing, no renamed columns."""
    fmt = detect_format(source, cfg.format)
    with storage.reading(source):
        raw = storage.read_bytes(source)
    if fmt == "parquet":
        try:
            table = pq.read_table(io.BytesIO(raw))
        except (pa.ArrowException, OSError) as e:
            raise RecipeError(f"{source}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
        _unique_columns(table.column_names, source)
        return table.to_pandas()
    text = _decode(raw, source)
    if not text.strip():
        raise RecipeError(f"{source}: empty file")
    if fmt == "conll":
        return _read_conll(text, source, cfg)
    return _read_jsonl(text, source) if fmt == "jsonl" else _read_delimited(text, source, fmt, cfg)


def _read_conll(text: str, source: str, cfg) -> pd.DataFrame:
    """CoNLL-style `token<TAB>tag` lines (or the first and last of whitespace-separated columns), a blank line
    between documents: one row per document, its tokens in data.text_column and tags in data.label_column."""
    docs, starts, tokens, tags = [], [], [], []
    for n, line in enumerate(text.splitlines() + [""], 1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                docs.append((tokens, tags))
                tokens, tags = [], []
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2 or not fields[0].strip() or not fields[-1].strip():
            raise RecipeError(f"{source} line {n}: expected token<TAB>tag, got {line.strip()[:40]!r}")
        if not tokens:
            starts.append(n)
        tokens.append(fields[0].strip())
        tags.append(fields[-1].strip())
    df = pd.DataFrame({cfg.text_column: [d[0] for d in docs], cfg.label_column: [d[1] for d in docs]}, dtype=object)
    df.attrs["rows"] = starts  # a document is named by its first line in error messages
    return df


def _read_jsonl(text: str, source: str) -> pd.DataFrame:
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        _unique_columns(keys, f"{source} line {n}")
        return dict(pairs)

    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=no_duplicates)
        except json.JSONDecodeError as e:
            raise RecipeError(f"{source} line {n}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise RecipeError(
                f'{source} line {n}: expected a JSON object {{"text": ..., "label": ...}}, '
                f"got {type(row).__name__} {line.strip()[:40]}"
            )
        rows.append(row)
    return pd.DataFrame(rows, dtype=object)  # object: labels 1 and 0.0 stay what they are


def _read_delimited(text: str, source: str, fmt: str, cfg) -> pd.DataFrame:
    sep = "\t" if fmt == "tsv" else ","
    # GLUE-style TSV: quotes are text
    reader = csv.reader(io.StringIO(text), delimiter=sep, quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)
    rows, lines = [], []  # lines: where each row starts (a quoted field may span lines)
    try:
        start = 1
        for row in reader:
            if row:  # blank lines
                rows.append(row)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as e:
        raise RecipeError(f"{source} line {reader.line_num}: cannot parse as {fmt} ({e})") from None
    if cfg.header:
        names, rows, lines = rows[0], rows[1:], lines[1:]
        _unique_columns(names, f"{source} header")
    else:
        names = list(cfg.column_names)
        first = [v.strip() for v in rows[0]]
        if first == names or (cfg.label_column in names and first[names.index(cfg.label_column)] == cfg.label_column):
            raise RecipeError(
                f"{source} row 1: looks like a header ({', '.join(first)}), but data.header=false; set data.header=true"
            )
    for row, line in zip(rows, lines):
        if len(row) != len(names):
            what = "tabs" if fmt == "tsv" else "commas (quote them), or a quote left open"
            raise RecipeError(
                f"{source} line {line}: {len(row)} fields, expected {len(names)} ({', '.join(names)}); "
                f"fields with {what}?"
            )
    return pd.DataFrame(rows, columns=names, dtype=str)


def _unique_columns(names: Sequence[str], where: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise RecipeError(f"{where}: column {name!r} appears twice; column names must be unique")
        seen.add(name)


def read_hub(cfg, split: str) -> pd.DataFrame:
    import datasets

    try:
        return datasets.load_dataset(cfg.hub_id, cfg.hub_config, split=split).to_pandas()
    except Exception as e:  # offline, unknown id or split: datasets raises many kinds
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecipeError(f"data.hub_id={cfg.hub_id} split {split!r}: cannot load ({reason})") from None


def require_columns(df: pd.DataFrame, source: str, cfg, keys: Sequence[str]) -> None:
    for key in keys:
        col = getattr(cfg, key)
        if col is not None and col not in df.columns:
            raise RecipeError(
                f"{source}: no column {col!r} (columns: {', '.join(map(str, df.columns))}); set data.{key}"
            )


def texts(col: pd.Series, source: str, name: str, rows: List[int]) -> List[str]:
    values = col.tolist()
    for text, row in zip(values, rows):
        if missing(text) or (isinstance(text, str) and not text.strip()):
            raise RecipeError(f"{source} row {row}: empty text in column {name!r}")
        if isinstance(text, (list, np.ndarray)):
            raise RecipeError(
                f"{source} row {row}: column {name!r} holds a list of tokens, expected a string "
                "(token lists: task=token_classification)"
            )
        if not isinstance(text, str):
            raise RecipeError(
                f"{source} row {row}: text in column {name!r} is {type(text).__name__} {text!r}, expected a string"
            )
    if not values:
        raise RecipeError(f"{source}: no examples")
    return values


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def class_name(value, source: str, row: int, column: str) -> str:
    """A label as the class name it stands for: 1, 1.0 and "1" are the same class."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        if not float(value).is_integer():
            raise RecipeError(
                f"{source} row {row}: label {value!r} in column {column!r} is not a class name; "
                "expected a string or an integer"
            )
        return str(int(value))
    if not isinstance(value, str):
        raise RecipeError(
            f"{source} row {row}: label in column {column!r} is {type(value).__name__} {value!r}; "
            "expected a string or an integer"
        )
    return value.strip()


def carved_fractions(cfg) -> Dict[str, float]:
    """The fractions of the train file that become the validation and test splits.

    Given files are used whole: with data.split unset, validation and test are carved
    (15 % each) only when neither is given as a file.
    """
    if cfg.split is not None:
        fractions = dict(zip(SPLITS, cfg.split))
    elif cfg.validation is None and cfg.test is None:
        fractions = {"train": 0.7, "validation": 0.15, "test": 0.15}
    else:
        return {}
    return {s: fractions[s] for s in ("validation", "test") if cfg[s] is None and fractions[s] > 0}


def load_splits(cfg, task, needed: Sequence[str] = SPLITS) -> Dict[str, Any]:
    """The splits named in `needed`, from files or the Hub, carving missing ones out of train.

    Carved splits come from a seeded shuffle of train, so evaluation on a carved test split
    sees exactly the rows training held out. `task.table` turns each split's rows into its examples.
    """

    def read(split):
        source = cfg[split]
        if cfg.hub_id:
            return f"{cfg.hub_id}[{source}]", read_hub(cfg, source)
        return source, read_file(source, cfg)

    carve = carved_fractions(cfg)
    tables = {}
    if "train" in needed or any(s in needed for s in carve):
        source, df = read("train")
        rows = np.asarray(df.attrs.get("rows", range(1, len(df) + 1)))
        order = np.random.default_rng(cfg.split_seed).permutation(len(df))
        start = 0
        for split, fraction in carve.items():
            n = int(round(fraction * len(df)))
            take = order[start : start + n]
            start += n
            if split in needed:
                tables[split] = task.table(df.iloc[take], f"{source} ({split} part)", cfg, rows[take].tolist())
        if "train" in needed:
            keep = np.sort(order[start:])
            tables["train"] = task.table(df.iloc[keep], source, cfg, rows[keep].tolist())
    for split in needed:
        if split not in tables and cfg[split] is not None:
            source, df = read(split)
            tables[split] = task.table(df, source, cfg, list(df.attrs.get("rows", range(1, len(df) + 1))))
    for split in needed:
        if split not in tables:
            log.info("%s: none (no file given, and data.split carves none)", split)
            continue
        rest = f" (rest of it after carving {', '.join(carve)})" if split == "train" and carve else ""
        log.info("%s: %d rows from %s%s", split, len(tables[split].rows), tables[split].source, rest)
    return tables


IGNORE = -100  # label of positions the loss skips (padding, non-first sub-tokens): torch's and HF's convention


@dataclass
class Encoded:
    """Token ids of a split, ready to batch."""

    features: Dict[str, List[List[int]]]  # input_ids, and token_type_ids where the model uses them
    lengths: np.ndarray
    labels: Union[
        torch.Tensor, List[List[int]]
    ]  # per example: a class id or label vector; or per token (padded with IGNORE)
    extra: Any = None  # the task's own bookkeeping (e.g. which document a window came from)


def collate(data: Encoded, indices: Sequence[int], pad_id: int, width: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Pad a batch to its own longest example (dynamic padding), or to `width` (a fixed set of shapes, for XLA)."""
    longest = int(data.lengths[indices].max())
    width = max(longest, width or 0)
    batch = {}
    for key, seqs in data.features.items():
        out = torch.full((len(indices), width), pad_id if key == "input_ids" else 0, dtype=torch.long)
        for row, i in enumerate(indices):
            out[row, : len(seqs[i])] = torch.tensor(seqs[i])
        batch[key] = out
    batch["attention_mask"] = (torch.arange(width)[None, :] < torch.as_tensor(data.lengths[indices])[:, None]).long()
    if isinstance(data.labels, torch.Tensor):
        batch["labels"] = data.labels[indices]
    else:
        seqs = [data.labels[i] for i in indices]
        # per-token labels line up with the inputs; target sequences (seq2seq) pad like them where widths are fixed
        target_width = max(max(map(len, seqs)), width if width > longest else 0)
        labels = torch.full((len(seqs), target_width), IGNORE, dtype=torch.long)
        for row, seq in enumerate(seqs):
            labels[row, : len(seq)] = torch.tensor(seq)
        batch["labels"] = labels
    return batch


def epoch_batches(
    lengths: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    group_by_length: bool,
    group_size: int,
    rank: int = 0,
    world_size: int = 1,
) -> List[np.ndarray]:
    """This rank's batches for one epoch, the same on every run with the same arguments.

    With group_by_length, a random pool of `group_size` batches per rank is sorted by length
    and cut into batches, and the batches of all pools are shuffled again: batches pad little
    but every batch still comes from a random slice of the data and the order of lengths is random.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        pool = batch_size * group_size * world_size
        order = np.concatenate(
            [
                chunk[np.argsort(lengths[chunk], kind="stable")]
                for chunk in np.split(order, range(pool, len(order), pool))
            ]
        )
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    usable = len(batches) - len(batches) % world_size  # every rank takes the same number of steps
    return batches[rank:usable:world_size]
