"""Evaluate a trained classifier on a labeled split.

    python run.py evaluate checkpoint=outputs/<run>/model [data=...] [split=test]

Writes metrics.json (accuracy, precision/recall/F1 micro, macro and per class),
predictions.jsonl, and confusion_matrix.png (single-label) or pr_curves.png (multi-label).
"""
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from launcher.dist import Runtime, autocast_dtype
from recipes import data, metrics
from recipes.checkpoint import RunDir
from recipes.errors import RecipeError
from recipes.model import attn_implementation, load_trained, task_of, thresholds_of

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
        thresholds = metrics.tune_thresholds(probs, y, task.threshold) if task.tune_thresholds else np.full(len(labels), task.threshold)
    return {
        "loss": float(F.binary_cross_entropy_with_logits(t_logits, t_y.float())),
        **metrics.multi_label(probs, y, labels, thresholds),
        "thresholds": [float(t) for t in thresholds],
    }


def evaluate(cfg, rt: Runtime) -> dict:
    run = RunDir(cfg.output_dir or str(Path(str(cfg.checkpoint).rstrip("/")).parent / f"eval-{cfg.data.name}-{cfg.split}"))
    if cfg.split not in data.SPLITS:
        raise RecipeError(f"split={cfg.split!r}: expected one of {', '.join(data.SPLITS)}")
    dtype = autocast_dtype(cfg.precision, rt.device)
    model, tokenizer = load_trained(cfg.checkpoint, attn_implementation(None, rt.device, dtype))
    if rt.is_main:
        run.ensure_writable()
    model.to(rt.device)
    multi = task_of(model.config) == "multi_label"
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    tables = data.load_splits(cfg.data, multi, needed=(cfg.split,))
    if cfg.split not in tables:
        raise RecipeError(f"data.{cfg.split}: no {cfg.split} split in data={cfg.data.name} (give data.{cfg.split}=path or a data.split fraction)")
    table = tables[cfg.split]
    encoded = data.encode(table, tokenizer, {l: i for i, l in enumerate(labels)}, tokenizer.model_max_length, multi)
    logits = predict(model, encoded, rt, cfg.batch_size, dtype, tokenizer.pad_token_id)
    y = encoded.labels.numpy()
    thresholds = thresholds_of(model.config).numpy() if multi else None
    result = {"checkpoint": str(cfg.checkpoint), "data": table.source, "examples": len(y), **score(logits, y, labels, multi, None, thresholds)}
    if not rt.is_main:
        return result
    if multi:
        probs = 1 / (1 + np.exp(-logits))
        metrics.plot_pr_curves(probs, y, labels, str(run.path("pr_curves.png")))
        run.publish("pr_curves.png")
        preds = [[labels[j] for j in np.flatnonzero(p >= thresholds)] for p in probs]
        scores = [{labels[j]: round(float(v), 5) for j, v in enumerate(p)} for p in probs]
    else:
        probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
        metrics.plot_confusion(logits, y, labels, str(run.path("confusion_matrix.png")))
        run.publish("confusion_matrix.png")
        preds = [labels[j] for j in probs.argmax(-1)]
        scores = [{labels[j]: round(float(v), 5) for j, v in enumerate(p)} for p in probs]
    lines = []
    for i in range(len(y)):
        row = {"row": table.rows[i], "text": table.texts[i], "label": table.labels[i], "prediction": preds[i], "scores": scores[i]}
        if table.pairs:
            row["text_pair"] = table.pairs[i]
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    run.write_text("predictions.jsonl", "".join(lines))
    run.write_text("metrics.json", json.dumps(result, indent=2) + "\n")
    log.info("%s on %s (%d examples): %s", cfg.split, table.source, len(y), metrics.headline(result))
    print(f"metrics:     {run.uri('metrics.json')}\npredictions: {run.uri('predictions.jsonl')}")
    return result
