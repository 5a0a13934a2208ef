"""Single-label classification: one class per text (or text pair), softmax over the classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import pyarrow as pa
from omegaconf import MISSING

from recipes.errors import RecipeError
from recipes.lazy import lazy
from recipes.tasks._classification import Classification, Table, precision_recall_f1

torch = lazy("torch")
F = lazy("torch.nn.functional")
special = lazy("scipy.special")
sklearn_metrics = lazy("sklearn.metrics")
data = lazy("recipes.data")
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
OPTIONS = ("all_scores",)


@dataclass
class Config:
    type: str = MISSING
    metric: str = MISSING  # validation metric that picks the best checkpoint ("loss" is minimised)
    all_scores: bool = MISSING  # batch inference: also write every label's probability (column "scores")


def check(cfg) -> None:
    pass


def metrics(predicted: np.ndarray, y: np.ndarray, labels: List[str]) -> Dict:
    """Accuracy and precision/recall/F1 of predicted class ids against the true ones."""
    return {"accuracy": float((predicted == y).mean()), **precision_recall_f1(y, predicted, labels)}


class SingleLabel(Classification):
    name = "single_label"
    problem_type = "single_label_classification"

    def row_label(self, value, source: str, row: int, data_cfg) -> str:
        column = data_cfg.label_column
        if isinstance(value, (list, np.ndarray)):
            raise RecipeError(f"{source} row {row}: label in column {column!r} is a list; use task=multi_label")
        name = "" if data.missing(value) else data.class_name(value, source, row, column)
        if not name:
            raise RecipeError(f"{source} row {row}: empty label in column {column!r}")
        return name

    def targets(self, table: Table) -> torch.Tensor:
        index = {l: i for i, l in enumerate(self.labels)}
        return torch.tensor([index[l] for l in table.labels])

    def loss_of(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets)

    # ---- the decision, for evaluation and batch inference alike
    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return special.softmax(logits, axis=-1)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """The predicted class id of each row."""
        return probs.argmax(-1)

    def chosen(self, probs: np.ndarray) -> List[str]:
        return [self.labels[j] for j in self.decide(probs)]

    def score(self, logits: np.ndarray, encoded: data.Encoded, tune: bool = False) -> Dict:
        y = encoded.labels.numpy()
        loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)))
        return {"loss": loss, **metrics(self.decide(self.probabilities(logits)), y, self.labels)}

    def save(self, config, result: Dict) -> None:
        pass

    def outputs(self, probs: np.ndarray) -> Dict[str, pa.Array]:
        """`label` and its probability `score`."""
        best = self.decide(probs)
        return {
            "label": pa.array([self.labels[j] for j in best], pa.string()),
            "score": pa.array(probs[np.arange(len(best)), best], pa.float32()),
        }

    def plots(self, run, logits: np.ndarray, encoded: data.Encoded) -> List[str]:
        predicted = self.decide(self.probabilities(logits))
        run.write(
            "confusion_matrix.png", lambda path: plot_confusion(predicted, encoded.labels.numpy(), self.labels, path)
        )
        return ["confusion_matrix.png"]


def plot_confusion(predicted: np.ndarray, y: np.ndarray, labels: List[str], path: str) -> None:
    cm = sklearn_metrics.confusion_matrix(y, predicted, labels=list(range(len(labels))))
    size = max(4, 0.5 * len(labels) + 2)
    fig, ax = plots.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, cm[i, j], ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title("Confusion matrix")
    plots.save(fig, path)


TASK = SingleLabel
