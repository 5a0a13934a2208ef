"""Evaluate a trained model on a labeled split, with the task it was trained for.

    python run.py evaluate checkpoint=outputs/<run>/model [data=...] [split=test]

Writes metrics.json (the task's metrics), predictions.jsonl (one line per input row) and the
task's plots (confusion_matrix.png, pr_curves.png, ...).
"""

import hashlib
import json
import logging

import torch
from omegaconf import OmegaConf

from recipes import data, storage, tasks
from recipes.checkpoint import RunDir
from recipes.errors import RecipeError
from recipes.infer_predict import DTYPES, load_for_inference, resolve_engine
from recipes.model import model_dir_of
from recipes.runtime import Runtime

log = logging.getLogger("text_recipes")


OUTPUTS = ("metrics.json", "predictions.jsonl")  # and the task's plots (*.png)


def default_output_dir(model_dir: str, cfg) -> str:
    """<run>/eval-<data>-<split>-<hash>: evaluations on other data or splits never share a directory."""
    inputs = [OmegaConf.to_container(cfg.data, resolve=True), cfg.split]
    if (cfg.engine, cfg.precision) != ("torch", "fp32"):  # what a setting costs is measured beside fp32's result
        inputs += [cfg.engine, cfg.precision]
    inputs = json.dumps(inputs, sort_keys=True)
    digest = hashlib.sha1(inputs.encode()).hexdigest()[:8]
    return storage.join(storage.parent(model_dir), f"eval-{cfg.data.name}-{cfg.split}-{digest}")


def check_output_dir(run: RunDir, overwrite: bool) -> None:
    names = [n for n in run.entries() if not n.startswith(".")]  # temp files of an interrupted evaluation
    foreign = sorted(n for n in names if n not in OUTPUTS and not n.endswith(".png"))
    if foreign:
        raise RecipeError(
            f"output_dir {run.url}: holds other files ({', '.join(foreign[:3])}); use a new or empty directory"
        )
    if "metrics.json" in names and not overwrite:
        raise RecipeError(
            f"output_dir {run.url}: holds an earlier evaluation; "
            "pass overwrite=true to replace it, or another output_dir"
        )


def load(model_dir: str, cfg, rt: Runtime):
    """(model, tokenizer, task) at the engine and precision asked; for ONNX Runtime, rank 0 exports the model first
    where its cache has no export (recipes/onnx_engine.py)."""
    if cfg.precision == "int8" and rt.device.type != "cpu":
        raise RecipeError(f"precision=int8: dynamic quantization runs on CPU only (device: {rt.device.type})")
    local, key = storage.local_model_dir(model_dir), None
    if cfg.engine == "onnx":
        from transformers import AutoConfig

        from recipes import onnx_engine

        task = tasks.of_model(AutoConfig.from_pretrained(local), f"checkpoint={model_dir}")
        resolve_engine("onnx", task, rt.device, cfg.precision, f"checkpoint={model_dir}")
        # rank 0 exports where the cache has none; every rank then takes its key
        key = rt.gather(onnx_engine.prepare(local, model_dir, task.name, cfg.precision)[0] if rt.is_main else None)[0]
    return load_for_inference(local, cfg.precision, rt.device, cfg.engine, key, torch.get_num_threads())


def evaluate(cfg, rt: Runtime) -> dict:
    model_dir = model_dir_of(str(cfg.checkpoint))
    run = RunDir(cfg.output_dir or default_output_dir(model_dir, cfg))
    check_output_dir(run, cfg.overwrite)
    run.check_writable()
    model, tokenizer, task = load(model_dir, cfg, rt)
    tables = data.load_splits(cfg.data, task, needed=(cfg.split,))
    if cfg.split not in tables:
        raise RecipeError(
            f"data.{cfg.split}: no {cfg.split} split in data={cfg.data.name} "
            f"(give data.{cfg.split}=path, or set data.split to carve it out of train)"
        )
    table = tables[cfg.split]
    encoded = task.encode(table, tokenizer, tokenizer.model_max_length)
    predictions = task.predict(model, encoded, rt, cfg.batch_size, DTYPES[cfg.precision], tokenizer)
    result = {
        "checkpoint": model_dir,
        "data": table.source,
        "examples": len(table.rows),
        "engine": cfg.engine,
        "precision": cfg.precision,
        **task.score(predictions, encoded),
    }
    if not rt.is_main:
        return result
    run.create()
    task.plots(run, predictions, encoded)
    run.write_text("predictions.jsonl", "".join(task.prediction_rows(table, predictions)))
    run.write_text("metrics.json", json.dumps(result, indent=2) + "\n")  # last: marks the evaluation complete
    log.info("%s on %s (%d examples): %s", cfg.split, table.source, len(table.rows), tasks.headline(task, result))
    print(f"metrics:     {run.uri('metrics.json')}\npredictions: {run.uri('predictions.jsonl')}")
    return result
