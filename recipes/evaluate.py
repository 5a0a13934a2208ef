"""Evaluate a trained classifier on a labeled split.

    python run.py evaluate checkpoint=outputs/<run>/model [data=...] [split=test]

Writes metrics.json (accuracy, precision/recall/F1 micro, macro and per class),
predictions.jsonl, and confusion_matrix.png (single-label) or pr_curves.png (multi-label).
"""
import hashlib
import json
import logging
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tqdm import tqdm

from recipes.runtime import Runtime, autocast_dtype
from recipes import data, metrics, storage
from recipes.checkpoint import RunDir
from recipes.errors import RecipeError
from recipes.model import attn_implementation, load_trained, model_dir_of, task_of, thresholds_of

log = logging.getLogger("text_recipes")


@torch.inference_mode()
def predict(model, encoded: data.Encoded, rt: Runtime, batch_size: int, dtype: torch.dtype, pad_id: int) -> np.ndarray:
    """Logits for every example, in input order; the work is shared across ranks."""
    model.eval()
    order = np.argsort(-encoded.lengths, kind="stable")  # longest first: little padding per batch
    mine = order[rt.rank :: rt.world_size]
    out = []
    batches = range(0, len(mine), batch_size)
    for start in tqdm(batches, desc="predict", unit="batch", leave=False, disable=not rt.is_main or len(batches) < 10):
        batch = data.collate(encoded, mine[start : start + batch_size], pad_id)
        batch.pop("labels")
        with torch.autocast(rt.device.type, dtype=dtype, enabled=dtype != torch.float32):
            out.append(model(**{k: v.to(rt.device) for k, v in batch.items()}).logits.float().cpu())
    logits = torch.cat(out).numpy() if out else np.zeros((0, model.config.num_labels), np.float32)
    result = np.zeros((len(order), logits.shape[1]), np.float32)
    for idx, part in rt.gather((mine, logits)):
        result[idx] = part
    return result


def score(logits: np.ndarray, y: np.ndarray, labels: List[str], multi_label: bool, task, thresholds: Optional[np.ndarray] = None) -> Dict:
    """Metrics of `logits` against `y`. Multi-label without given thresholds tunes them (if the task says so)."""
    t_logits, t_y = torch.from_numpy(logits), torch.from_numpy(y)
    if not multi_label:
        return {"loss": float(F.cross_entropy(t_logits, t_y)), **metrics.single_label(logits, y, labels)}
    probs = torch.sigmoid(t_logits).numpy()
    if thresholds is None:
        thresholds = (metrics.tune_thresholds(probs, y, task.threshold, task.tune_min_positives) if task.tune_thresholds
                      else np.full(len(labels), task.threshold))
    return {
        "loss": float(F.binary_cross_entropy_with_logits(t_logits, t_y.float())),
        **metrics.multi_label(probs, y, labels, thresholds),
        "thresholds": [float(t) for t in thresholds],
    }


OUTPUTS = ("metrics.json", "predictions.jsonl", "confusion_matrix.png", "pr_curves.png")


def default_output_dir(model_dir: str, cfg) -> str:
    """<run>/eval-<data>-<split>-<hash>: evaluations on other data or splits never share a directory."""
    inputs = json.dumps([OmegaConf.to_container(cfg.data, resolve=True), cfg.split], sort_keys=True)
    digest = hashlib.sha1(inputs.encode()).hexdigest()[:8]
    return storage.join(storage.parent(model_dir), f"eval-{cfg.data.name}-{cfg.split}-{digest}")


def check_output_dir(run: RunDir, overwrite: bool) -> None:
    names = [n for n in run.entries() if not n.startswith(".")]  # temp files of an interrupted evaluation
    foreign = sorted(set(names) - set(OUTPUTS))
    if foreign:
        raise RecipeError(f"output_dir {run.url}: holds other files ({', '.join(foreign[:3])}); use a new or empty directory")
    if "metrics.json" in names and not overwrite:
        raise RecipeError(f"output_dir {run.url}: holds an earlier evaluation; pass overwrite=true to replace it, or another output_dir")


def evaluate(cfg, rt: Runtime) -> dict:
    model_dir = model_dir_of(str(cfg.checkpoint))
    run = RunDir(cfg.output_dir or default_output_dir(model_dir, cfg))
    check_output_dir(run, cfg.overwrite)
    run.check_writable()
    dtype = autocast_dtype(cfg.precision, rt.device)
    model, tokenizer = load_trained(model_dir, attn_implementation(None, rt.device, dtype))
    model.to(rt.device)
    multi = task_of(model.config) == "multi_label"
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    tables = data.load_splits(cfg.data, multi, needed=(cfg.split,))
    if cfg.split not in tables:
        raise RecipeError(f"data.{cfg.split}: no {cfg.split} split in data={cfg.data.name} (give data.{cfg.split}=path, or set data.split to carve it out of train)")
    table = tables[cfg.split]
    encoded = data.encode(table, tokenizer, {l: i for i, l in enumerate(labels)}, tokenizer.model_max_length, multi)
    logits = predict(model, encoded, rt, cfg.batch_size, dtype, tokenizer.pad_token_id)
    y = encoded.labels.numpy()
    thresholds = thresholds_of(model.config).numpy() if multi else None
    result = {"checkpoint": model_dir, "data": table.source, "examples": len(y), **score(logits, y, labels, multi, None, thresholds)}
    if not rt.is_main:
        return result
    run.create()
    if multi:
        probs = 1 / (1 + np.exp(-logits))
        run.write("pr_curves.png", lambda path: metrics.plot_pr_curves(probs, y, labels, path))
        preds = [[labels[j] for j in np.flatnonzero(p >= thresholds)] for p in probs]
        scores = [{labels[j]: round(float(v), 5) for j, v in enumerate(p)} for p in probs]
    else:
        probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
        run.write("confusion_matrix.png", lambda path: metrics.plot_confusion(logits, y, labels, path))
        preds = [labels[j] for j in probs.argmax(-1)]
        scores = [{labels[j]: round(float(v), 5) for j, v in enumerate(p)} for p in probs]
    lines = []
    for i in range(len(y)):
        row = {"row": table.rows[i], "text": table.texts[i], "label": table.labels[i], "prediction": preds[i], "scores": scores[i]}
        if table.pairs:
            row["text_pair"] = table.pairs[i]
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    run.write_text("predictions.jsonl", "".join(lines))
    run.write_text("metrics.json", json.dumps(result, indent=2) + "\n")  # last: marks the evaluation complete
    log.info("%s on %s (%d examples): %s", cfg.split, table.source, len(y), metrics.headline(result))
    print(f"metrics:     {run.uri('metrics.json')}\npredictions: {run.uri('predictions.jsonl')}")
    return result
