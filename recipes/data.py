"""Reading labeled text tables, encoding them, and batching them by length."""
import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from recipes import storage
from recipes.errors import RecipeError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
COMPRESSION = {".gz", ".bz2", ".xz", ".zst", ".zip"}
SPLITS = ("train", "validation", "test")


def detect_format(source: str, fmt: Optional[str]) -> str:
    if fmt:
        if fmt not in FORMATS.values():
            raise RecipeError(f"data.format={fmt!r}: expected one of {sorted(set(FORMATS.values()))}")
        return fmt
    suffixes = [x.lower() for x in PurePosixPath(source.split("?")[0]).suffixes]
    if suffixes and suffixes[-1] in COMPRESSION:  # data.csv.gz -> csv
        suffixes.pop()
    if suffixes and suffixes[-1] in FORMATS:
        return FORMATS[suffixes[-1]]
    raise RecipeError(f"{source}: unknown file format; expected .csv, .tsv, .jsonl or .parquet, or set data.format")


def _decode(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise RecipeError(f"{source} line {line}: not valid UTF-8 (byte 0x{raw[e.start]:02x}); re-save the file as UTF-8") from None


def read_file(source: str, cfg) -> pd.DataFrame:
    """One table from a local path or fsspec URL. Text columns stay strings (no NaN guessing)."""
    fmt = detect_format(source, cfg.format)
    try:
        raw = storage.read_bytes(source)
    except FileNotFoundError:
        raise RecipeError(f"{source}: file not found") from None
    except IsADirectoryError:
        raise RecipeError(f"{source}: is a directory; expected a data file") from None
    if fmt == "parquet":
        return pd.read_parquet(io.BytesIO(raw))
    text = _decode(raw, source)
    if fmt == "jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise RecipeError(f"{source} line {n}: invalid JSON ({e.msg})") from None
        return pd.DataFrame(rows)
    names = list(cfg.column_names) if cfg.column_names else None
    try:
        return pd.read_csv(
            io.StringIO(text),
            sep="\t" if fmt == "tsv" else ",",
            quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL,  # GLUE-style TSV: quotes are text
            header=0 if cfg.header else None,
            names=names,
            dtype=str,
            keep_default_na=False,
        )
    except pd.errors.EmptyDataError:
        raise RecipeError(f"{source}: empty file") from None
    except pd.errors.ParserError as e:
        raise RecipeError(f"{source}: cannot parse as {fmt} ({str(e).strip()})") from None


def read_hub(cfg, split: str) -> pd.DataFrame:
    import datasets

    return datasets.load_dataset(cfg.hub_id, cfg.hub_config, split=split).to_pandas()


@dataclass
class Table:
    """Validated examples of one split. `source` names where they came from in error messages."""

    source: str
    texts: List[str]
    pairs: Optional[List[str]]
    labels: List  # str per row (single-label) or list of str (multi-label)
    rows: List[int]  # 1-based row numbers in the source, for error messages


def to_table(df: pd.DataFrame, source: str, cfg, multi_label: bool, rows: Optional[Sequence[int]] = None) -> Table:
    for key in ("text_column", "text_pair_column", "label_column"):
        col = getattr(cfg, key)
        if col is not None and col not in df.columns:
            raise RecipeError(
                f"{source}: no column {col!r} (columns: {', '.join(map(str, df.columns))}); set data.{key}"
            )
    rows = [int(r) for r in rows] if rows is not None else list(range(1, len(df) + 1))
    texts = _texts(df[cfg.text_column], source, cfg.text_column, rows)
    pairs = _texts(df[cfg.text_pair_column], source, cfg.text_pair_column, rows) if cfg.text_pair_column else None
    labels = [_label(v, source, row, cfg, multi_label) for v, row in zip(df[cfg.label_column].tolist(), rows)]
    if not texts:
        raise RecipeError(f"{source}: no examples")
    return Table(source, texts, pairs, labels, rows)


def _texts(col: pd.Series, source: str, name: str, rows: List[int]) -> List[str]:
    texts = col.tolist()
    for text, row in zip(texts, rows):
        if not isinstance(text, str) or not text.strip():
            raise RecipeError(f"{source} row {row}: empty text in column {name!r}")
    return texts


def _label(value, source: str, row: int, cfg, multi_label: bool):
    if multi_label:
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, str):
            value = value.split(cfg.label_delimiter) if cfg.label_delimiter else [value]
        if not isinstance(value, list):
            raise RecipeError(f"{source} row {row}: label {value!r} in {cfg.label_column!r} is not a list or string")
        return sorted({str(v).strip() for v in value if str(v).strip()})
    if isinstance(value, (list, np.ndarray)):
        raise RecipeError(f"{source} row {row}: label in {cfg.label_column!r} is a list; use task=multi_label")
    if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
        raise RecipeError(f"{source} row {row}: empty label in column {cfg.label_column!r}")
    return str(value).strip()


def load_splits(cfg, multi_label: bool, needed: Sequence[str] = SPLITS) -> Dict[str, Table]:
    """The splits named in `needed`, from files or the Hub, carving missing ones out of train.

    Missing validation/test splits with a non-zero fraction in data.split come from a seeded
    shuffle of train, so evaluation on a carved test split sees exactly the rows training held out.
    """
    def read(split):
        source = getattr(cfg, split)
        if cfg.hub_id:
            return f"{cfg.hub_id}[{source}]", read_hub(cfg, source)
        return source, read_file(source, cfg)

    if cfg.train is None and cfg.hub_id is None:
        raise RecipeError("data.train: no training file given (set data.train=path/to/file)")
    if len(cfg.split) != 3 or any(f < 0 for f in cfg.split):
        raise RecipeError(f"data.split={list(cfg.split)}: expected three non-negative fractions (train, validation, test)")
    carve = [s for s in ("validation", "test") if getattr(cfg, s) is None and cfg.split[SPLITS.index(s)] > 0]
    tables = {}
    if "train" in needed or any(s in needed for s in carve):
        source, df = read("train")
        rows = np.arange(1, len(df) + 1)
        order = np.random.default_rng(cfg.split_seed).permutation(len(df))
        start = 0
        for split in carve:
            n = int(round(cfg.split[SPLITS.index(split)] * len(df)))
            take = order[start : start + n]
            start += n
            if split in needed:
                tables[split] = to_table(df.iloc[take], f"{source} ({split} part)", cfg, multi_label, rows[take])
        if "train" in needed:
            keep = np.sort(order[start:])
            tables["train"] = to_table(df.iloc[keep], source, cfg, multi_label, rows[keep])
    for split in needed:
        if split not in tables and getattr(cfg, split) is not None:
            source, df = read(split)
            tables[split] = to_table(df, source, cfg, multi_label)
    return tables


def label_set(train: Table, multi_label: bool) -> List[str]:
    labels = sorted({l for ls in train.labels for l in ls} if multi_label else set(train.labels))
    if len(labels) < 2:
        raise RecipeError(f"{train.source}: only one label ({labels[0] if labels else 'none'!r}) in the training data; need at least 2")
    return labels


def check_labels(table: Table, label2id: Dict[str, int], multi_label: bool) -> None:
    for labels, row in zip(table.labels, table.rows):
        for label in labels if multi_label else [labels]:
            if label not in label2id:
                known = ", ".join(label2id)
                raise RecipeError(f"{table.source} row {row}: label {label!r} was not seen in training (model labels: {known})")


@dataclass
class Encoded:
    """Token ids of a split, ready to batch."""

    features: Dict[str, List[List[int]]]  # input_ids, and token_type_ids where the model uses them
    lengths: np.ndarray
    labels: torch.Tensor  # int64 [n] or float32 [n, num_labels]


def encode(table: Table, tokenizer, label2id: Dict[str, int], max_length: int, multi_label: bool) -> Encoded:
    check_labels(table, label2id, multi_label)
    enc = tokenizer(table.texts, table.pairs, truncation=True, max_length=max_length)
    features = {k: enc[k] for k in ("input_ids", "token_type_ids") if k in enc}
    if multi_label:
        labels = torch.zeros(len(table.labels), len(label2id))
        for i, ls in enumerate(table.labels):
            labels[i, [label2id[l] for l in ls]] = 1.0
    else:
        labels = torch.tensor([label2id[l] for l in table.labels])
    return Encoded(features, np.array([len(x) for x in enc["input_ids"]]), labels)


def collate(data: Encoded, indices: Sequence[int], pad_id: int) -> Dict[str, torch.Tensor]:
    """Pad a batch to its own longest example (dynamic padding)."""
    width = int(data.lengths[indices].max())
    batch = {}
    for key, seqs in data.features.items():
        out = torch.full((len(indices), width), pad_id if key == "input_ids" else 0, dtype=torch.long)
        for row, i in enumerate(indices):
            out[row, : len(seqs[i])] = torch.tensor(seqs[i])
        batch[key] = out
    batch["attention_mask"] = (torch.arange(width)[None, :] < torch.as_tensor(data.lengths[indices])[:, None]).long()
    batch["labels"] = data.labels[indices]
    return batch


def epoch_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool, group_size: int,
    rank: int = 0, world_size: int = 1,
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
            [chunk[np.argsort(lengths[chunk], kind="stable")] for chunk in np.split(order, range(pool, len(order), pool))]
        )
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    usable = len(batches) - len(batches) % world_size  # every rank takes the same number of steps
    return batches[rank:usable:world_size]
