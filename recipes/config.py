"""Typed schema of the Hydra configs.

The YAML files under conf/ are the single home of default values; these dataclasses only
declare which keys exist and their types, so a typo or a wrong type fails at startup with
the key's name instead of somewhere deep inside a run.
"""
from dataclasses import dataclass
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from recipes.infer_config import InferConfig


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
    precision: str = MISSING
    device: str = MISSING


SCHEMAS = {"train": TrainConfig, "evaluate": EvaluateConfig, "infer": InferConfig}


def register() -> None:
    cs = ConfigStore.instance()
    for command, schema in SCHEMAS.items():
        cs.store(name=f"{command}_schema", node=schema)
