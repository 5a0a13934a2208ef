"""What single- and multi-label classification share: text (or text-pair) rows, one label set, a sequence-classification
head, precision/recall/F1 per class. SingleLabel and MultiLabel say how a row's labels read and how logits decide."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa

from recipes import blocks
from recipes.errors import RecipeError
from recipes.lazy import lazy

torch = lazy("torch")
transformers = lazy("transformers")
sklearn_metrics = lazy("sklearn.metrics")
data = lazy("recipes.data")
model_loading = lazy("recipes.model")
predict = lazy("recipes.predict")


@dataclass
class Table:
    """Validated examples of one split. `source` names where they came from in error messages."""

    source: str
    texts: List[str]
    pairs: Optional[List[str]]
    labels: List  # str per row (single-label) or list of str (multi-label)
    rows: List[int]  # 1-based row numbers in the source, for error messages


def precision_recall_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: List[str]) -> Dict:
    """Micro and macro averages, and per class, over class ids (single-label) or 0/1 matrices (multi-label)."""
    out = {}
    ids = list(range(len(labels)))
    for avg in ("micro", "macro"):
        p, r, f, _ = sklearn_metrics.precision_recall_fscore_support(
            y_true, y_pred, labels=ids, average=avg, zero_division=0
        )
        out.update({f"precision_{avg}": float(p), f"recall_{avg}": float(r), f"f1_{avg}": float(f)})
    p, r, f, s = sklearn_metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=ids, average=None, zero_division=0
    )
    out["per_class"] = {
        label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, label in enumerate(labels)
    }
    return out


class Classification:
    """The shared part. A subclass defines row_label, targets, loss_of, probabilities, decide, chosen, score and
    outputs."""

    name: str
    problem_type: str
    reads_pairs = True  # batch inference reads a text pair column when the model was trained on one
    onnx = True  # its forward pass (token ids -> logits) runs on ONNX Runtime too
    HEADLINE = ("accuracy", "f1_micro", "f1_macro")

    def __init__(self, cfg, labels: Optional[List[str]] = None):
        self.cfg = cfg  # the task config; a trained model's as saved with it, inference options applied
        self.labels = labels

    @classmethod
    def from_model(cls, config, cfg):
        return cls(cfg, [config.id2label[i] for i in range(config.num_labels)])

    @staticmethod
    def model_class():
        return transformers.AutoModelForSequenceClassification

    # ---- data
    def table(self, df, source: str, data_cfg, rows: Optional[List[int]] = None) -> Table:
        rows = rows if rows is not None else list(range(1, len(df) + 1))
        data.require_columns(df, source, data_cfg, ("text_column", "text_pair_column", "label_column"))
        texts = data.texts(df[data_cfg.text_column], source, data_cfg.text_column, rows)
        pairs = (
            data.texts(df[data_cfg.text_pair_column], source, data_cfg.text_pair_column, rows)
            if data_cfg.text_pair_column
            else None
        )
        labels = [self.row_label(v, source, row, data_cfg) for v, row in zip(df[data_cfg.label_column].tolist(), rows)]
        return Table(source, texts, pairs, labels, rows)

    def fit(self, train: Table) -> None:
        """The label set, from the training split."""
        labels = sorted({l for ls in train.labels for l in (ls if isinstance(ls, list) else [ls])})
        if len(labels) < 2:
            raise RecipeError(
                f"{train.source}: only one label ({labels[0] if labels else 'none'!r}) in the training data; "
                "need at least 2"
            )
        self.labels = labels

    @property
    def vocabulary(self) -> List[str]:
        return self.labels

    def check_labels(self, table: Table) -> None:
        known = set(self.labels)
        for labels, row in zip(table.labels, table.rows):
            for label in labels if isinstance(labels, list) else [labels]:
                if label not in known:
                    raise RecipeError(
                        f"{table.source} row {row}: label {label!r} was not seen in training "
                        f"(model labels: {', '.join(self.labels)})"
                    )

    def encode(self, table: Table, tokenizer, max_length: int) -> data.Encoded:
        self.check_labels(table)
        enc = tokenizer(table.texts, table.pairs, truncation=True, max_length=max_length)
        features = {k: enc[k] for k in ("input_ids", "token_type_ids") if k in enc}
        return data.Encoded(features, np.array([len(x) for x in enc["input_ids"]]), self.targets(table))

    # ---- model
    def new_model(self, name_or_path: str, attn: str, train: data.Encoded, tokenizer):
        return model_loading.from_pretrained_quietly(
            self.model_class(),
            name_or_path,
            num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
            label2id={l: i for i, l in enumerate(self.labels)},
            problem_type=self.problem_type,
            attn_implementation=attn,
        )

    def loss(self, model, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        targets = batch.pop("labels")
        return self.loss_of(model(**batch).logits.float(), targets)

    # ---- evaluation
    def predict(self, model, encoded: data.Encoded, rt, batch_size: int, dtype: torch.dtype, tokenizer) -> np.ndarray:
        """Logits, one row per example."""

        def logits(batch):
            batch.pop("labels")
            with torch.autocast(rt.device.type, dtype=dtype, enabled=dtype != torch.float32):
                return list(model(**batch).logits.float().cpu().numpy())

        out = predict.over_batches(model, encoded, rt, batch_size, tokenizer.pad_token_id, logits)
        return np.stack(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def prediction_rows(self, table: Table, logits: np.ndarray) -> List[str]:
        probs = self.probabilities(logits)
        chosen = self.chosen(probs)
        lines = []
        for i in range(len(table.rows)):
            row = {
                "row": table.rows[i],
                "text": table.texts[i],
                "label": table.labels[i],
                "prediction": chosen[i],
                "scores": {self.labels[j]: round(float(v), 5) for j, v in enumerate(probs[i])},
            }
            if table.pairs:
                row["text_pair"] = table.pairs[i]
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
        return lines

    # ---- batch inference
    def encode_block(self, tokenizer, texts: List[str], pairs: Optional[List[str]], max_length: int) -> blocks.Encoded:
        return blocks.token_ids(tokenizer, texts, pairs, max_length)

    def predict_block(self, runner, table: pa.Table) -> Dict[str, pa.Array]:
        types = blocks.column(table, "token_type_ids") if "token_type_ids" in table.column_names else None
        probs = self.probabilities(runner.logits(blocks.column(table, "input_ids"), types))
        columns = self.outputs(probs)
        if self.cfg.all_scores:
            fields = [pa.array(probs[:, j], pa.float32()) for j in range(len(self.labels))]
            columns["scores"] = pa.StructArray.from_arrays(fields, names=self.labels)
        return columns
