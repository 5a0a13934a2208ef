"""Multi-label classification: any number of labels per text, a sigmoid per label, thresholds tuned on validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
from omegaconf import MISSING

from recipes.config import require
from recipes.errors import RecipeError
from recipes.lazy import lazy
from recipes.tasks._classification import Classification, Table, precision_recall_f1

torch = lazy("torch")
F = lazy("torch.nn.functional")
special = lazy("scipy.special")
sklearn_metrics = lazy("sklearn.metrics")
data = lazy("recipes.data")
model_loading = lazy("recipes.model")
plots = lazy("recipes.plots")

METRICS = (
    "accuracy",
    "f1_micro",
    "f1_macro",
    "precision_micro",
    "precision_macro",
    "recall_micro",
    "recall_macro",
    "loss",
)
OPTIONS = ("top_k", "all_scores")


@dataclass
class Config:
    type: str = MISSING
    metric: str = MISSING  # validation metric that picks the best checkpoint ("loss" is minimised)
    threshold: float = MISSING  # decision threshold before tuning
    tune_thresholds: bool = MISSING  # tune one threshold per label on validation
    tune_min_positives: int = MISSING  # labels with fewer validation positives keep `threshold`
    top_k: int = MISSING  # batch inference: the k most probable labels with their probabilities (column "top_k")
    all_scores: bool = MISSING  # batch inference: also write every label's probability (column "scores")


def check(cfg) -> None:
    require(0 < cfg.threshold < 1, "task.threshold", cfg.threshold, "expected a probability in (0, 1)")
    require(cfg.tune_min_positives >= 1, "task.tune_min_positives", cfg.tune_min_positives, "expected at least 1")
    require(cfg.top_k >= 1, "task.top_k", cfg.top_k, "must be at least 1")


def metrics(predicted: np.ndarray, y: np.ndarray, labels: List[str]) -> Dict:
    """Exact-match accuracy (every label of a row right) and precision/recall/F1 of 0/1 label matrices."""
    return {
        "accuracy": float((predicted == y).all(1).mean()),
        **precision_recall_f1(y.astype(int), predicted.astype(int), labels),
    }


def tune_thresholds(probs: np.ndarray, y: np.ndarray, default: float, min_positives: int = 1) -> np.ndarray:
    """Per label, the threshold that maximises that label's F1 on (validation) data.

    Labels with fewer than `min_positives` positive examples keep `default`: tuned on one or two
    positives, the best F1 is often a threshold below hundreds of negatives, which then flood
    every prediction with that label.
    """
    out = np.full(probs.shape[1], default, dtype=float)
    for j in range(probs.shape[1]):
        if y[:, j].sum() < max(1, min_positives):
            continue
        p, r, t = sklearn_metrics.precision_recall_curve(y[:, j], probs[:, j])
        f1 = 2 * p[:-1] * r[:-1] / np.maximum(p[:-1] + r[:-1], 1e-12)
        out[j] = float(t[int(np.argmax(f1))])
    return out


TOP_K_TYPE = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32())]))


class MultiLabel(Classification):
    name = "multi_label"
    problem_type = "multi_label_classification"

    def __init__(self, cfg, labels: Optional[List[str]] = None, thresholds: Optional[np.ndarray] = None):
        super().__init__(cfg, labels)
        self.thresholds = thresholds  # a trained model's, saved with it

    @classmethod
    def from_model(cls, config, cfg):
        labels = [config.id2label[i] for i in range(config.num_labels)]
        saved: Dict[str, float] = getattr(config, "label_thresholds", None) or {}
        return cls(cfg, labels, np.array([saved.get(l, 0.5) for l in labels]))

    def row_label(self, value, source: str, row: int, data_cfg) -> List[str]:
        column = data_cfg.label_column
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, str):
            value = value.split(data_cfg.label_delimiter) if data_cfg.label_delimiter else [value]
        if not isinstance(value, list):
            raise RecipeError(f"{source} row {row}: label {value!r} in column {column!r} is not a list or a string")
        return sorted({name for name in (data.class_name(v, source, row, column) for v in value) if name})

    def targets(self, table: Table) -> torch.Tensor:
        index = {l: i for i, l in enumerate(self.labels)}
        y = torch.zeros(len(table.labels), len(self.labels))
        for i, ls in enumerate(table.labels):
            y[i, [index[l] for l in ls]] = 1.0
        return y

    def new_model(self, name_or_path: str, attn: str, train: data.Encoded, tokenizer):
        model = super().new_model(name_or_path, attn, train, tokenizer)
        model_loading.init_bias_to_prior(model, train.labels.mean(0))
        return model

    def loss_of(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets)

    # ---- the decision, for evaluation and batch inference alike
    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return special.expit(logits)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Per row and label: 1 where the label's probability reaches its threshold."""
        return (probs >= self.thresholds).astype(np.int8)

    def chosen(self, probs: np.ndarray) -> List[List[str]]:
        """Each row's labels, most probable first."""
        order = np.argsort(-probs, axis=1, kind="stable")
        return [[self.labels[j] for j in row if on[j]] for row, on in zip(order, self.decide(probs))]

    def score(self, logits: np.ndarray, encoded: data.Encoded, tune: bool = False) -> Dict:
        """Metrics at the saved thresholds; while training, at thresholds tuned on this data (if the task config says
        so)."""
        y = encoded.labels.numpy()
        probs = self.probabilities(logits)
        if tune:
            t = self.cfg
            self.thresholds = (
                tune_thresholds(probs, y, t.threshold, t.tune_min_positives)
                if t.tune_thresholds
                else np.full(len(self.labels), t.threshold)
            )
        loss = float(F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(y).float()))
        return {
            "loss": loss,
            **metrics(self.decide(probs), y, self.labels),
            "thresholds": [float(v) for v in self.thresholds],
        }

    def save(self, config, result: Dict) -> None:
        config.label_thresholds = {l: float(t) for l, t in zip(self.labels, result["thresholds"])}

    def outputs(self, probs: np.ndarray) -> Dict[str, pa.Array]:
        """`labels` at or above their thresholds (most probable first), the `top_k` labels with their probabilities."""
        order = np.argsort(-probs, axis=1, kind="stable")
        k = min(self.cfg.top_k, len(self.labels))
        top = [[{"label": self.labels[j], "score": float(p[j])} for j in row[:k]] for row, p in zip(order, probs)]
        return {"labels": pa.array(self.chosen(probs), pa.list_(pa.string())), "top_k": pa.array(top, TOP_K_TYPE)}

    def plots(self, run, logits: np.ndarray, encoded: data.Encoded) -> List[str]:
        probs = self.probabilities(logits)
        run.write("pr_curves.png", lambda path: plot_pr_curves(probs, encoded.labels.numpy(), self.labels, path))
        return ["pr_curves.png"]


def plot_pr_curves(probs: np.ndarray, y: np.ndarray, labels: List[str], path: str, top: int = 12) -> None:
    """Precision-recall curves: micro-average plus the `top` most frequent labels."""
    fig, ax = plots.subplots(figsize=(7, 6))
    p, r, _ = sklearn_metrics.precision_recall_curve(y.ravel(), probs.ravel())
    ax.plot(r, p, color="black", lw=2, label="micro-average")
    for j in np.argsort(-y.sum(0))[:top]:
        if y[:, j].sum():
            p, r, _ = sklearn_metrics.precision_recall_curve(y[:, j], probs[:, j])
            ax.plot(r, p, lw=1, label=labels[j])
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall")
    ax.legend(fontsize=7, loc="lower left")
    plots.save(fig, path)


TASK = MultiLabel
