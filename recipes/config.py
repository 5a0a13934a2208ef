"""The configs of the three recipes: the keys and types of conf/<command>.yaml, and the checks of their values.

The YAML files under conf/ are the single home of default values; these dataclasses only declare which keys
exist and their types, so a typo or a wrong type fails at startup with the key's name instead of somewhere deep
inside a run. The checks run before any work, and on the submitting machine at `torchx run --dryrun` time, so
this module reads no files and imports nothing heavy. What only the job's machine can tell (files, models,
devices) is checked by data.py, model.py and the runtime when a recipe starts. Each task's keys are its
module's (recipes/tasks/).
"""

import math
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Callable, Dict, List, Optional, Tuple

from omegaconf import MISSING, OmegaConf

from recipes.errors import RecipeError


@dataclass
class ModelConfig:
    name: str = MISSING  # short name used in run directory names
    name_or_path: str = MISSING  # Hub id, local directory or fsspec URL of a pretrained model
    max_length: int = MISSING  # longer inputs are truncated to this many tokens
    attn_implementation: Optional[str] = MISSING  # null: sdpa, except eager for bf16 on CPU
    dropout: Optional[float] = MISSING  # every dropout probability while training; null: the model's own


@dataclass
class DataConfig:
    name: str = MISSING
    hub_id: Optional[str] = MISSING  # a Hub dataset: train/validation/test are then split names
    hub_config: Optional[str] = MISSING
    train: Optional[str] = MISSING  # file path or fsspec URL (gs://...), or a Hub split name
    validation: Optional[str] = MISSING
    test: Optional[str] = MISSING
    format: Optional[str] = MISSING  # csv, tsv, jsonl or parquet; null: from the file extension
    header: bool = MISSING  # csv/tsv files have a header row
    column_names: Optional[List[str]] = MISSING  # names for the columns of header-less files
    text_column: str = MISSING
    text_pair_column: Optional[str] = MISSING  # second text column for sentence-pair tasks
    label_column: str = MISSING
    label_delimiter: Optional[str] = MISSING  # multi-label labels given as one delimited string
    split: Optional[List[float]] = MISSING  # train/validation/test fractions; null: 70/15/15 if only train is given
    split_seed: int = MISSING


@dataclass
class OptimConfig:
    lr: float = MISSING
    weight_decay: float = MISSING
    betas: List[float] = MISSING
    eps: float = MISSING
    scheduler: str = MISSING  # any transformers scheduler name: linear, cosine, constant_with_warmup...
    warmup_fraction: float = MISSING


@dataclass
class TrainerConfig:
    seed: int = MISSING
    epochs: int = MISSING
    max_steps: int = MISSING  # optimizer steps; -1: run `epochs` epochs
    batch_size: int = MISSING  # per process, per micro-batch
    eval_batch_size: int = MISSING
    grad_accum_steps: int = MISSING
    max_grad_norm: float = MISSING  # 0 disables clipping
    precision: str = MISSING  # auto, bf16 or fp32
    group_by_length: bool = MISSING
    group_size: int = MISSING  # batches per length-sorted pool when grouping by length
    eval_every: int = MISSING  # steps; 0: at the end of each epoch
    save_every: int = MISSING  # steps; 0: at the end of each epoch
    keep_checkpoints: int = MISSING
    early_stopping_patience: int = MISSING  # evaluations without improvement; 0 disables
    log_every: int = MISSING
    device: str = MISSING  # auto, cpu or cuda


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    task: Any = MISSING  # each task's keys are typed by its module's Config (recipes/tasks/)
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = MISSING
    output_dir: str = MISSING


@dataclass
class EvaluateConfig:
    checkpoint: str = MISSING  # a model directory written by training (run_dir/model)
    data: DataConfig = MISSING
    split: str = MISSING  # train, validation or test
    output_dir: Optional[str] = MISSING  # null: <run>/eval-<data.name>-<split>-<hash of the data config>
    overwrite: bool = MISSING  # replace an earlier evaluation in output_dir
    batch_size: int = MISSING
    precision: str = MISSING  # fp32, bf16 or int8
    engine: str = MISSING  # torch or onnx
    device: str = MISSING


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
    strict: bool = MISSING  # a bad row ends the job instead of being counted and skipped
    overwrite: bool = MISSING  # replace what another job left in output
    precision: str = MISSING  # auto (int8 where measured to keep quality, else fp32), fp32, bf16 or int8 (CPU)
    engine: str = MISSING  # auto (ONNX Runtime where it can run the model, else torch), torch or onnx
    batch_size: Optional[int] = MISSING  # rows per forward pass; null: 16 on CPU (8 at int8), 64 on GPUs
    block_rows: int = MISSING  # input rows per output shard: the unit that is sorted by length and committed
    actors: Optional[int] = (
        MISSING  # predictor actors; null: one per gpus_per_actor GPUs, or per threads_per_actor CPUs
    )
    gpus_per_actor: float = MISSING  # the component's --gpu; 0: predict on CPU
    cpus_per_actor: float = MISSING  # Ray's CPU reservation per actor, below its threads to leave room for read tasks
    threads_per_actor: int = MISSING  # torch threads in each actor
    task: Any = MISSING  # the model's task options (task.top_k=5): every task's OPTIONS, null keeps the model's setting


SCHEMAS = {"train": TrainConfig, "evaluate": EvaluateConfig, "infer": InferConfig}


SPLITS = ("train", "validation", "test")
FORMATS = ("csv", "tsv", "jsonl", "parquet", "conll")
PRECISIONS = ("auto", "bf16", "fp32")
INFER_FORMATS = ("csv", "tsv", "jsonl", "parquet")
OUTPUT_FORMATS = ("parquet", "jsonl")
INFER_PRECISIONS = ("auto", "fp32", "bf16", "int8")
ENGINES = ("auto", "torch", "onnx")
DEVICES = ("auto", "cpu", "cuda", "tpu")
# transformers schedulers that need nothing beyond (optimizer, warmup steps, total steps) and step once per
# optimizer step; the others want extra arguments (min_lr, decay steps) or a metric (reduce_lr_on_plateau).
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise RecipeError(f"{key}={value!r}: {allowed}")


def _at_least(node, prefix: str, key: str, least: int) -> None:
    require(node[key] >= least, prefix + key, node[key], f"must be at least {least}")


def _one_of(node, prefix: str, key: str, choices) -> None:
    require(node[key] in choices, prefix + key, node[key], f"expected one of {', '.join(choices)}")


def check_model(m) -> None:
    if not OmegaConf.is_interpolation(m, "name_or_path"):  # resolved where the job runs (an installed package)
        require(
            str(m.name_or_path).strip() != "",
            "model.name_or_path",
            m.name_or_path,
            "expected a Hub id, a model directory or a gs:// URL",
        )
    _at_least(m, "model.", "max_length", 8)
    require(
        m.dropout is None or 0 <= m.dropout < 1,
        "model.dropout",
        m.dropout,
        "expected a probability in [0, 1), or null for the model's own",
    )
    require(
        m.attn_implementation in (None, *ATTENTION),
        "model.attn_implementation",
        m.attn_implementation,
        f"expected null (automatic) or one of {', '.join(ATTENTION)}",
    )


def data_format(fmt: Optional[str], path: Optional[str]) -> Optional[str]:
    """The format of a data file, from data.format or its extension (None if neither says)."""
    if fmt:
        return fmt
    suffixes = [s.lower() for s in PurePosixPath(str(path or "").split("?")[0]).suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst", ".zip"):
        suffixes.pop()
    return {
        ".csv": "csv",
        ".tsv": "tsv",
        ".jsonl": "jsonl",
        ".json": "jsonl",
        ".parquet": "parquet",
        ".conll": "conll",
    }.get(suffixes[-1] if suffixes else "")


def check_data(d, needed=SPLITS) -> None:
    require(
        d.format is None or d.format in FORMATS,
        "data.format",
        d.format,
        f"expected null (from the file extension) or one of {', '.join(FORMATS)}",
    )
    carves = d.split is not None or (d.validation is None and d.test is None)
    if d.hub_id is None and ("train" in needed or carves and any(d[s] is None for s in needed)):
        require(d.train is not None, "data.train", "null", "no training file given (set data.train=path/to/file)")
    for split in SPLITS:
        value = d[split]
        require(
            value is None or str(value).strip() != "",
            f"data.{split}",
            value,
            "expected a file path, URL or Hub split name, or null",
        )
    given = [s for s in ("validation", "test") if d[s] is not None]
    if d.split is not None:
        fractions = list(d.split)
        require(
            len(fractions) == 3 and all(f >= 0 for f in fractions),
            "data.split",
            fractions,
            "expected three non-negative fractions: train, validation, test",
        )
        require(math.isclose(sum(fractions), 1.0, abs_tol=1e-6), "data.split", fractions, "the fractions must sum to 1")
        for s in given:
            require(
                fractions[SPLITS.index(s)] == 0,
                "data.split",
                fractions,
                f"data.{s} is given as a file, so its fraction must be 0 (given files are used whole)",
            )
    require(0 <= d.split_seed < 2**32, "data.split_seed", d.split_seed, "expected an integer from 0 to 2**32 - 1")
    for key in ("text_column", "label_column"):
        require(bool(str(d[key]).strip()), f"data.{key}", d[key], "expected a column name")
    require(
        d.text_pair_column is None or d.text_pair_column != d.text_column,
        "data.text_pair_column",
        d.text_pair_column,
        "must differ from data.text_column",
    )
    require(
        d.label_column not in (d.text_column, d.text_pair_column),
        "data.label_column",
        d.label_column,
        "must differ from the text columns",
    )
    require(
        d.label_delimiter is None or d.label_delimiter != "",
        "data.label_delimiter",
        d.label_delimiter,
        "expected a non-empty string or null",
    )
    if d.hub_id is not None:
        return
    tabular = [s for s in needed if d[s] is not None and data_format(d.format, d[s]) in ("jsonl", "parquet", "conll")]
    if d.column_names is not None:
        names = list(d.column_names)
        require(
            len(set(names)) == len(names) and all(str(n).strip() for n in names),
            "data.column_names",
            names,
            "expected distinct, non-empty column names",
        )
        require(
            not tabular,
            "data.column_names",
            names,
            f"applies to csv/tsv files only, not {d[tabular[0]] if tabular else ''}",
        )
    if not d.header and not tabular:
        require(
            d.column_names is not None, "data.header", False, "header-less csv/tsv files need data.column_names=[...]"
        )


def check_optim(o) -> None:
    require(o.lr > 0, "optim.lr", o.lr, "must be > 0")
    require(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    betas = list(o.betas)
    require(
        len(betas) == 2 and all(0 <= b < 1 for b in betas),
        "optim.betas",
        betas,
        "expected two numbers in [0, 1), e.g. [0.9, 0.999]",
    )
    require(o.eps > 0, "optim.eps", o.eps, "must be > 0")
    _one_of(o, "optim.", "scheduler", SCHEDULERS)
    require(
        0 <= o.warmup_fraction < 1,
        "optim.warmup_fraction",
        o.warmup_fraction,
        "expected a fraction of the steps in [0, 1)",
    )


def check_trainer(t) -> None:
    require(0 <= t.seed < 2**32, "trainer.seed", t.seed, "expected an integer from 0 to 2**32 - 1")
    require(
        t.max_steps == -1 or t.max_steps >= 1,
        "trainer.max_steps",
        t.max_steps,
        "expected -1 (run trainer.epochs) or at least 1",
    )
    if t.max_steps == -1:
        _at_least(t, "trainer.", "epochs", 1)
    for key in ("batch_size", "eval_batch_size", "grad_accum_steps", "group_size", "keep_checkpoints", "log_every"):
        _at_least(t, "trainer.", key, 1)
    for key in ("eval_every", "save_every", "early_stopping_patience"):
        _at_least(t, "trainer.", key, 0)
    require(t.max_grad_norm >= 0, "trainer.max_grad_norm", t.max_grad_norm, "must be >= 0 (0 disables clipping)")
    _one_of(t, "trainer.", "precision", PRECISIONS)
    _one_of(t, "trainer.", "device", DEVICES)


def check_output_dir(value: Optional[str], key: str = "output_dir") -> None:
    require(value is None or str(value).strip() != "", key, value, "expected a directory path or gs:// URL")


def check_train(cfg) -> None:
    check_model(cfg.model)
    check_data(cfg.data, needed=("train", "validation"))
    check_optim(cfg.optim)
    check_trainer(cfg.trainer)
    check_output_dir(cfg.output_dir)


def check_evaluate(cfg) -> None:
    require(
        str(cfg.checkpoint).strip() != "",
        "checkpoint",
        cfg.checkpoint,
        "expected a model directory (<run>/model) or run directory",
    )
    _one_of(cfg, "", "split", SPLITS)
    check_data(cfg.data, needed=(cfg.split,))
    _at_least(cfg, "", "batch_size", 1)
    check_inference_settings(cfg, cfg.device not in ("auto", "cpu"), ENGINES[1:], INFER_PRECISIONS[1:])
    _one_of(cfg, "", "device", DEVICES)
    check_output_dir(cfg.output_dir)


def check_infer(cfg) -> None:
    for key in ("model_dir", "input", "output"):
        require(bool(str(cfg[key]).strip()), key, cfg[key], "expected a path or gs:// URL")
    require(str(cfg.output).rstrip("/") != str(cfg.input).rstrip("/"), "output", cfg.output, "must differ from input")
    require(
        cfg.format is None or cfg.format in INFER_FORMATS,
        "format",
        cfg.format,
        f"expected null (from the file extension) or one of {', '.join(INFER_FORMATS)}",
    )
    if cfg.column_names is not None:
        names = list(cfg.column_names)
        require(
            len(names) > 0 and len(set(names)) == len(names) and all(str(n).strip() for n in names),
            "column_names",
            names,
            "expected distinct, non-empty column names",
        )
    for key in ("text_column", "text_pair_column", "id_column"):
        require(cfg[key] is None or str(cfg[key]).strip() != "", key, cfg[key], "expected a column name, or null")
    named = [cfg[k] for k in ("text_column", "text_pair_column", "id_column") if cfg[k] is not None]
    require(len(set(named)) == len(named), "id_column", cfg.id_column, "text, pair and id columns must differ")
    require(cfg.max_length is None or cfg.max_length >= 8, "max_length", cfg.max_length, "expected null or at least 8")
    require(
        cfg.output_format in OUTPUT_FORMATS,
        "output_format",
        cfg.output_format,
        f"expected one of {', '.join(OUTPUT_FORMATS)}",
    )
    check_inference_settings(cfg, cfg.gpus_per_actor > 0, ENGINES, INFER_PRECISIONS)
    for key in ("block_rows", "threads_per_actor"):
        require(cfg[key] >= 1, key, cfg[key], "must be at least 1")
    require(
        cfg.batch_size is None or cfg.batch_size >= 1,
        "batch_size",
        cfg.batch_size,
        "expected null (by device) or at least 1",
    )
    require(
        cfg.actors is None or cfg.actors >= 1,
        "actors",
        cfg.actors,
        "expected null (from the cluster's resources) or at least 1",
    )
    require(cfg.gpus_per_actor >= 0, "gpus_per_actor", cfg.gpus_per_actor, "must be >= 0")
    require(cfg.cpus_per_actor > 0, "cpus_per_actor", cfg.cpus_per_actor, "must be > 0 (fractions allowed)")


def check_inference_settings(cfg, gpu: bool, engines: Tuple[str, ...], precisions: Tuple[str, ...]) -> None:
    """precision and engine of evaluate and infer: nothing lossier than fp32 unless asked or measured."""
    require(
        cfg.precision in precisions,
        "precision",
        cfg.precision,
        f"expected one of {', '.join(precisions)}"
        + ("; evaluate reports the model's quality at fp32 unless told otherwise" if "auto" not in precisions else ""),
    )
    require(cfg.engine in engines, "engine", cfg.engine, f"expected one of {', '.join(engines)}")
    require(
        not (cfg.precision == "int8" and gpu),
        "precision",
        cfg.precision,
        "int8 (dynamic quantization) runs on CPU only; use fp32 or bf16 on GPUs",
    )
    require(
        not (cfg.engine == "onnx" and (gpu or cfg.precision == "bf16")),
        "engine",
        cfg.engine,
        "ONNX Runtime runs fp32 or int8 on CPU here; use engine=torch for bf16 or GPUs",
    )


CHECKS: Dict[str, Callable] = {"train": check_train, "evaluate": check_evaluate, "infer": check_infer}
