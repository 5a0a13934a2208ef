"""Classification metrics, multi-label threshold tuning, and the plots people look at."""
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix, precision_recall_curve, precision_recall_fscore_support  # noqa: E402


def _prf(y_true, y_pred, labels: List[str]) -> Dict:
    out = {}
    ids = list(range(len(labels)))
    for avg in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=ids, average=avg, zero_division=0)
        out.update({f"precision_{avg}": float(p), f"recall_{avg}": float(r), f"f1_{avg}": float(f)})
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, average=None, zero_division=0)
    out["per_class"] = {
        label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, label in enumerate(labels)
    }
    return out


def single_label(logits: np.ndarray, y: np.ndarray, labels: List[str]) -> Dict:
    pred = logits.argmax(-1)
    return {"accuracy": float((pred == y).mean()), **_prf(y, pred, labels)}


def multi_label(probs: np.ndarray, y: np.ndarray, labels: List[str], thresholds: np.ndarray) -> Dict:
    pred = (probs >= thresholds).astype(int)
    # "accuracy" for multi-label is exact match: every label of the example right
    return {"accuracy": float((pred == y).all(1).mean()), **_prf(y.astype(int), pred, labels)}


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
        p, r, t = precision_recall_curve(y[:, j], probs[:, j])
        f1 = 2 * p[:-1] * r[:-1] / np.maximum(p[:-1] + r[:-1], 1e-12)
        out[j] = float(t[int(np.argmax(f1))])
    return out


def plot_confusion(logits: np.ndarray, y: np.ndarray, labels: List[str], path: str) -> None:
    cm = confusion_matrix(y, logits.argmax(-1), labels=list(range(len(labels))))
    size = max(4, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, cm[i, j], ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_pr_curves(probs: np.ndarray, y: np.ndarray, labels: List[str], path: str, top: int = 12) -> None:
    """Precision-recall curves: micro-average plus the `top` most frequent labels."""
    fig, ax = plt.subplots(figsize=(7, 6))
    p, r, _ = precision_recall_curve(y.ravel(), probs.ravel())
    ax.plot(r, p, color="black", lw=2, label="micro-average")
    for j in np.argsort(-y.sum(0))[:top]:
        if y[:, j].sum():
            p, r, _ = precision_recall_curve(y[:, j], probs[:, j])
            ax.plot(r, p, lw=1, label=labels[j])
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training_curve(history: List[Dict], metric: str, path: str) -> None:
    train = [h for h in history if "train_loss" in h]
    evals = [h for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([h["step"] for h in train], [h["train_loss"] for h in train], label="train loss", alpha=0.8)
    ax.plot([h["step"] for h in evals], [h["eval_loss"] for h in evals], "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if evals and metric != "loss":
        ax2 = ax.twinx()
        ax2.plot([h["step"] for h in evals], [h[f"eval_{metric}"] for h in evals], "s-", color="tab:green", label=f"validation {metric}")
        ax2.set_ylabel(metric)
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.set_title("Training")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def headline(metrics: Dict, keys=("accuracy", "f1_micro", "f1_macro", "precision", "recall", "f1", "rouge1", "rouge2", "rougeL")) -> str:
    return " ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)


def best_is_better(metric: str, new: float, best: Optional[float]) -> bool:
    if best is None:
        return True
    return new < best if metric == "loss" else new > best


def plot_entity_scores(per_type: Dict[str, Dict], path: str) -> None:
    """Precision, recall and F1 per entity type, with the number of gold entities."""
    types = sorted(per_type)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(types) + 2), 4))
    x = np.arange(len(types))
    for i, key in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (i - 1) * 0.27, [per_type[t][key] for t in types], width=0.27, label=key)
    ax.set_xticks(x, [f"{t}\n({per_type[t]['support']})" for t in types])
    ax.set_ylim(0, 1)
    ax.set_title("Entity-level scores per type (gold entities)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_rouge(per_row: Dict[str, List[float]], path: str) -> None:
    """How ROUGE F-measures spread over the examples, with their means."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, values in per_row.items():
        ax.hist(values, bins=20, range=(0, 1), histtype="step", lw=2, label=f"{key} (mean {np.mean(values):.3f})")
    ax.set_xlabel("F-measure per example")
    ax.set_ylabel("examples")
    ax.set_title("ROUGE")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
