"""Schema and value checks of conf/infer.yaml (batch inference).

Pure Python: `check` also runs on the submitting machine at `torchx run --dryrun` time, so it
reads no files and imports no torch, ray or transformers. What only the job can tell (the model,
the input files, the cluster's resources) is checked when the recipe starts, before any work.
"""
from dataclasses import dataclass
from typing import List, Optional

from omegaconf import MISSING

from recipes.errors import RecipeError

FORMATS = ("csv", "tsv", "jsonl", "parquet")
OUTPUT_FORMATS = ("parquet", "jsonl")
PRECISIONS = ("auto", "fp32", "bf16", "int8")


@dataclass
class InferConfig:
    # `model` would clash with the conf/model group on the command line; the component's --model sets model_dir
    model_dir: str = MISSING  # a model directory written by training (<run>/model), local or gs://
    input: str = MISSING  # a file, glob or directory, local or gs://
    output: str = MISSING  # the output directory, local or gs://
    format: Optional[str] = MISSING  # csv, tsv, jsonl or parquet; null: from each file's extension
    column_names: Optional[List[str]] = MISSING  # csv/tsv without a header row: their column names
    text_column: Optional[str] = MISSING  # null: the column the model was trained on
    text_pair_column: Optional[str] = MISSING  # null: the pair column the model was trained on, if any
    id_column: Optional[str] = MISSING  # null: the input's "id" column where it has one, else <file>:<line>
    max_length: Optional[int] = MISSING  # tokens; null: the model's own (saved with its tokenizer)
    output_format: str = MISSING  # parquet or jsonl
    all_scores: bool = MISSING  # also write every label's probability
    top_k: int = MISSING  # multi-label: the k most probable labels with their probabilities
    num_beams: Optional[int] = MISSING  # seq2seq: beams of generation; null: the model's (saved by training)
    max_new_tokens: Optional[int] = MISSING  # seq2seq: longest output in tokens; null: the model's
    strict: bool = MISSING  # a bad row ends the job instead of being counted and skipped
    overwrite: bool = MISSING  # replace what another job left in output
    precision: str = MISSING  # auto, fp32, bf16 or int8 (CPU: dynamic quantization of the linear layers)
    batch_size: Optional[int] = MISSING  # rows per forward pass; null: 16 on CPU (8 at int8), 64 on GPUs
    block_rows: int = MISSING  # input rows per output shard: the unit that is sorted by length and committed
    actors: Optional[int] = MISSING  # predictor actors; null: one per gpus_per_actor GPUs, or per threads_per_actor CPUs
    gpus_per_actor: float = MISSING  # the component's --gpu; 0: predict on CPU
    cpus_per_actor: float = MISSING  # Ray's CPU reservation per actor, below its threads to leave room for read tasks
    threads_per_actor: int = MISSING  # torch threads in each actor


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise RecipeError(f"{key}={value!r}: {allowed}")


def check(cfg) -> None:
    for key in ("model_dir", "input", "output"):
        _require(bool(str(cfg[key]).strip()), key, cfg[key], "expected a path or gs:// URL")
    _require(str(cfg.output).rstrip("/") != str(cfg.input).rstrip("/"), "output", cfg.output, "must differ from input")
    _require(cfg.format is None or cfg.format in FORMATS, "format", cfg.format,
             f"expected null (from the file extension) or one of {', '.join(FORMATS)}")
    if cfg.column_names is not None:
        names = list(cfg.column_names)
        _require(len(names) > 0 and len(set(names)) == len(names) and all(str(n).strip() for n in names),
                 "column_names", names, "expected distinct, non-empty column names")
    for key in ("text_column", "text_pair_column", "id_column"):
        _require(cfg[key] is None or str(cfg[key]).strip() != "", key, cfg[key], "expected a column name, or null")
    named = [cfg[k] for k in ("text_column", "text_pair_column", "id_column") if cfg[k] is not None]
    _require(len(set(named)) == len(named), "id_column", cfg.id_column, "text, pair and id columns must differ")
    _require(cfg.max_length is None or cfg.max_length >= 8, "max_length", cfg.max_length, "expected null or at least 8")
    _require(cfg.output_format in OUTPUT_FORMATS, "output_format", cfg.output_format, f"expected one of {', '.join(OUTPUT_FORMATS)}")
    _require(cfg.precision in PRECISIONS, "precision", cfg.precision, f"expected one of {', '.join(PRECISIONS)}")
    _require(not (cfg.precision == "int8" and cfg.gpus_per_actor > 0), "precision", cfg.precision,
             "int8 (dynamic quantization) runs on CPU only; use auto, bf16 or fp32 with gpus_per_actor > 0")
    for key in ("top_k", "block_rows", "threads_per_actor"):
        _require(cfg[key] >= 1, key, cfg[key], "must be at least 1")
    for key in ("num_beams", "max_new_tokens"):
        _require(cfg[key] is None or cfg[key] >= 1, key, cfg[key], "expected null (the model's setting) or at least 1")
    _require(cfg.batch_size is None or cfg.batch_size >= 1, "batch_size", cfg.batch_size, "expected null (by device) or at least 1")
    _require(cfg.actors is None or cfg.actors >= 1, "actors", cfg.actors, "expected null (from the cluster's resources) or at least 1")
    _require(cfg.gpus_per_actor >= 0, "gpus_per_actor", cfg.gpus_per_actor, "must be >= 0")
    _require(cfg.cpus_per_actor > 0, "cpus_per_actor", cfg.cpus_per_actor, "must be > 0 (fractions allowed)")
