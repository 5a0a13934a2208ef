"""Multi-label classification: any number of labels per text, a sigmoid per label, thresholds tuned on validation."""
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from omegaconf import MISSING

from recipes import data, metrics
from recipes.checks import require
from recipes.errors import RecipeError
from recipes.model import init_bias_to_prior
from recipes.tasks._classification import Classification, Table

METRICS = ("accuracy", "f1_micro", "f1_macro", "precision_micro", "precision_macro", "recall_micro", "recall_macro", "loss")


@dataclass
class Config:
    type: str = MISSING
    metric: str = MISSING  # validation metric that picks the best checkpoint ("loss" is minimised)
    threshold: float = MISSING  # decision threshold before tuning
    tune_thresholds: bool = MISSING  # tune one threshold per label on validation
    tune_min_positives: int = MISSING  # labels with fewer validation positives keep `threshold`


def check(cfg) -> None:
    require(0 < cfg.threshold < 1, "task.threshold", cfg.threshold, "expected a probability in (0, 1)")
    require(cfg.tune_min_positives >= 1, "task.tune_min_positives", cfg.tune_min_positives, "expected at least 1")


class MultiLabel(Classification):
    name = "multi_label"
    problem_type = "multi_label_classification"

    def __init__(self, cfg, labels: Optional[List[str]] = None, thresholds: Optional[np.ndarray] = None):
        super().__init__(cfg, labels)
        self.thresholds = thresholds  # a trained model's, saved with it

    @classmethod
    def from_model(cls, config):
        labels = [config.id2label[i] for i in range(config.num_labels)]
        saved: Dict[str, float] = getattr(config, "label_thresholds", None) or {}
        return cls(None, labels, np.array([saved.get(l, 0.5) for l in labels]))

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
        init_bias_to_prior(model, train.labels.mean(0))
        return model

    def loss_of(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets)

    def score(self, logits: np.ndarray, encoded: data.Encoded, tune: bool = False) -> Dict:
        """Metrics at the saved thresholds; while training, at thresholds tuned on this data (if the task config says so)."""
        y = encoded.labels.numpy()
        probs = 1 / (1 + np.exp(-logits))
        if tune:
            t = self.cfg
            self.thresholds = metrics.tune_thresholds(probs, y, t.threshold, t.tune_min_positives) if t.tune_thresholds else np.full(len(self.labels), t.threshold)
        return {
            "loss": float(F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(y).float())),
            **metrics.multi_label(probs, y, self.labels, self.thresholds),
            "thresholds": [float(v) for v in self.thresholds],
        }

    def save(self, config, result: Dict) -> None:
        config.label_thresholds = {l: float(t) for l, t in zip(self.labels, result["thresholds"])}

    def decide(self, logits: np.ndarray):
        probs = 1 / (1 + np.exp(-logits))
        return [[self.labels[j] for j in np.flatnonzero(p >= self.thresholds)] for p in probs], probs

    def plots(self, run, logits: np.ndarray, encoded: data.Encoded) -> List[str]:
        probs = 1 / (1 + np.exp(-logits))
        run.write("pr_curves.png", lambda path: metrics.plot_pr_curves(probs, encoded.labels.numpy(), self.labels, path))
        return ["pr_curves.png"]


TASK = MultiLabel
