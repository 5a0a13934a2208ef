"""Every config value checked in one place, before any work and at `torchx run --dryrun` time.

It runs on the submitting machine too, so it reads no files (the task modules it asks about
import torch, nothing more). What only the job's machine can tell (files, models, devices) is checked
by data.py, model.py and the runtime when a recipe starts.
"""
import math
from pathlib import PurePosixPath
from typing import Any, Callable, Dict, Optional

from omegaconf import OmegaConf

from recipes import tasks
from recipes.errors import RecipeError
from recipes.infer_config import check as check_infer

SPLITS = ("train", "validation", "test")
FORMATS = ("csv", "tsv", "jsonl", "parquet", "conll")
PRECISIONS = ("auto", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda", "tpu")
# transformers schedulers that need nothing beyond (optimizer, warmup steps, total steps) and step once per
# optimizer step; the others want extra arguments (min_lr, decay steps) or a metric (reduce_lr_on_plateau).
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt")
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
        require(str(m.name_or_path).strip() != "", "model.name_or_path", m.name_or_path, "expected a Hub id, a model directory or a gs:// URL")
    _at_least(m, "model.", "max_length", 8)
    require(m.dropout is None or 0 <= m.dropout < 1, "model.dropout", m.dropout, "expected a probability in [0, 1), or null for the model's own")
    require(m.attn_implementation in (None, *ATTENTION), "model.attn_implementation", m.attn_implementation,
            f"expected null (automatic) or one of {', '.join(ATTENTION)}")


def data_format(fmt: Optional[str], path: Optional[str]) -> Optional[str]:
    """The format of a data file, from data.format or its extension (None if neither says)."""
    if fmt:
        return fmt
    suffixes = [s.lower() for s in PurePosixPath(str(path or "").split("?")[0]).suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst", ".zip"):
        suffixes.pop()
    return {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".conll": "conll"}.get(suffixes[-1] if suffixes else "")


def check_data(d, needed=SPLITS) -> None:
    require(d.format is None or d.format in FORMATS, "data.format", d.format, f"expected null (from the file extension) or one of {', '.join(FORMATS)}")
    carves = d.split is not None or (d.validation is None and d.test is None)
    if d.hub_id is None and ("train" in needed or carves and any(d[s] is None for s in needed)):
        require(d.train is not None, "data.train", "null", "no training file given (set data.train=path/to/file)")
    for split in SPLITS:
        value = d[split]
        require(value is None or str(value).strip() != "", f"data.{split}", value, "expected a file path, URL or Hub split name, or null")
    given = [s for s in ("validation", "test") if d[s] is not None]
    if d.split is not None:
        fractions = list(d.split)
        require(len(fractions) == 3 and all(f >= 0 for f in fractions), "data.split", fractions,
                "expected three non-negative fractions: train, validation, test")
        require(math.isclose(sum(fractions), 1.0, abs_tol=1e-6), "data.split", fractions, "the fractions must sum to 1")
        for s in given:
            require(fractions[SPLITS.index(s)] == 0, "data.split", fractions,
                    f"data.{s} is given as a file, so its fraction must be 0 (given files are used whole)")
    require(0 <= d.split_seed < 2**32, "data.split_seed", d.split_seed, "expected an integer from 0 to 2**32 - 1")
    for key in ("text_column", "label_column"):
        require(bool(str(d[key]).strip()), f"data.{key}", d[key], "expected a column name")
    require(d.text_pair_column is None or d.text_pair_column != d.text_column, "data.text_pair_column", d.text_pair_column,
            "must differ from data.text_column")
    require(d.label_column not in (d.text_column, d.text_pair_column), "data.label_column", d.label_column, "must differ from the text columns")
    require(d.label_delimiter is None or d.label_delimiter != "", "data.label_delimiter", d.label_delimiter, "expected a non-empty string or null")
    if d.hub_id is not None:
        return
    tabular = [s for s in needed if d[s] is not None and data_format(d.format, d[s]) in ("jsonl", "parquet", "conll")]
    if d.column_names is not None:
        names = list(d.column_names)
        require(len(set(names)) == len(names) and all(str(n).strip() for n in names), "data.column_names", names,
                "expected distinct, non-empty column names")
        require(not tabular, "data.column_names", names, f"applies to csv/tsv files only, not {d[tabular[0]] if tabular else ''}")
    if not d.header and not tabular:
        require(d.column_names is not None, "data.header", False, "header-less csv/tsv files need data.column_names=[...]")


def check_optim(o) -> None:
    require(o.lr > 0, "optim.lr", o.lr, "must be > 0")
    require(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    betas = list(o.betas)
    require(len(betas) == 2 and all(0 <= b < 1 for b in betas), "optim.betas", betas, "expected two numbers in [0, 1), e.g. [0.9, 0.999]")
    require(o.eps > 0, "optim.eps", o.eps, "must be > 0")
    _one_of(o, "optim.", "scheduler", SCHEDULERS)
    require(0 <= o.warmup_fraction < 1, "optim.warmup_fraction", o.warmup_fraction, "expected a fraction of the steps in [0, 1)")


def check_trainer(t) -> None:
    require(0 <= t.seed < 2**32, "trainer.seed", t.seed, "expected an integer from 0 to 2**32 - 1")
    require(t.max_steps == -1 or t.max_steps >= 1, "trainer.max_steps", t.max_steps, "expected -1 (run trainer.epochs) or at least 1")
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
    tasks.check(cfg.task)
    check_optim(cfg.optim)
    check_trainer(cfg.trainer)
    check_output_dir(cfg.output_dir)


def check_evaluate(cfg) -> None:
    require(str(cfg.checkpoint).strip() != "", "checkpoint", cfg.checkpoint, "expected a model directory (<run>/model) or run directory")
    _one_of(cfg, "", "split", SPLITS)
    check_data(cfg.data, needed=(cfg.split,))
    _at_least(cfg, "", "batch_size", 1)
    _one_of(cfg, "", "precision", PRECISIONS)
    _one_of(cfg, "", "device", DEVICES)
    check_output_dir(cfg.output_dir)


CHECKS: Dict[str, Callable] = {"train": check_train, "evaluate": check_evaluate, "infer": check_infer}
