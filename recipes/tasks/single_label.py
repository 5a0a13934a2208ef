"""Single-label classification: one class per text (or text pair), softmax over the classes."""
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from recipes import data, metrics
from omegaconf import MISSING

from recipes.errors import RecipeError
from recipes.tasks._classification import Classification, Table

METRICS = ("accuracy", "f1_micro", "f1_macro", "precision_micro", "precision_macro", "recall_micro", "recall_macro", "loss")


@dataclass
class Config:
    type: str = MISSING
    metric: str = MISSING  # validation metric that picks the best checkpoint ("loss" is minimised)


def check(cfg) -> None:
    pass


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

    def score(self, logits: np.ndarray, encoded: data.Encoded, tune: bool = False) -> Dict:
        y = encoded.labels.numpy()
        return {"loss": float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y))), **metrics.single_label(logits, y, self.labels)}

    def save(self, config, result: Dict) -> None:
        pass

    def decide(self, logits: np.ndarray):
        probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
        return [self.labels[j] for j in probs.argmax(-1)], probs

    def plots(self, run, logits: np.ndarray, encoded: data.Encoded) -> List[str]:
        run.write("confusion_matrix.png", lambda path: metrics.plot_confusion(logits, encoded.labels.numpy(), self.labels, path))
        return ["confusion_matrix.png"]


TASK = SingleLabel
