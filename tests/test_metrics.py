"""Unit tests of the classification tasks' metrics, decisions and plots, on examples computed by hand."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recipes import tasks
from recipes.data import Encoded
from recipes.tasks import multi_label, single_label
from recipes.tasks._classification import Table
from recipes.tasks.multi_label import MultiLabel
from recipes.tasks.single_label import SingleLabel
from recipes.train import better, plot_training_curve

PNG = b"\x89PNG\r\n\x1a\n"

# Single-label, 3 classes, 6 examples.
#   true: A A A B B C
#   pred: A A B B C C
# A: TP 2, FP 0, FN 1 -> P 1,   R 2/3, F1 0.8
# B: TP 1, FP 1, FN 1 -> P 1/2, R 1/2, F1 1/2
# C: TP 1, FP 1, FN 0 -> P 1/2, R 1,   F1 2/3
LABELS = ["A", "B", "C"]
Y = np.array([0, 0, 0, 1, 1, 2])
PRED = np.array([0, 0, 1, 1, 2, 2])


def one_hot_logits(pred, n=3, high=2.0):
    logits = np.zeros((len(pred), n), np.float32)
    logits[np.arange(len(pred)), pred] = high
    return logits


def test_single_label_metrics_by_hand():
    m = single_label.metrics(PRED, Y, LABELS)
    assert m["accuracy"] == pytest.approx(4 / 6)
    expected = {
        "A": {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3},
        "B": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2},
        "C": {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1},
    }
    assert set(m["per_class"]) == set(LABELS)
    for label, exp in expected.items():
        got = m["per_class"][label]
        for key in ("precision", "recall", "f1"):
            assert got[key] == pytest.approx(exp[key]), (label, key)
        assert got["support"] == exp["support"]
    # micro averages over all decisions: for single-label they equal accuracy
    for key in ("precision_micro", "recall_micro", "f1_micro"):
        assert m[key] == pytest.approx(4 / 6)
    # macro averages the per-class values
    assert m["precision_macro"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["recall_macro"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert m["f1_macro"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_single_label_perfect_and_all_wrong():
    perfect = single_label.metrics(Y, Y, LABELS)
    assert perfect["accuracy"] == 1.0 and perfect["f1_macro"] == 1.0 and perfect["f1_micro"] == 1.0
    wrong = single_label.metrics((Y + 1) % 3, Y, LABELS)
    assert wrong["accuracy"] == 0.0 and wrong["f1_micro"] == 0.0 and wrong["f1_macro"] == 0.0


def test_single_label_class_never_seen_nor_predicted():
    m = single_label.metrics(PRED, Y, LABELS + ["D"])
    assert m["per_class"]["D"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["accuracy"] == pytest.approx(4 / 6)


# Multi-label, 3 labels, 4 examples, threshold 0.5.
#   probs                 y        pred@0.5
#   [0.9, 0.2, 0.6]      [1,0,1]   [1,0,1]  exact
#   [0.4, 0.7, 0.1]      [1,1,0]   [0,1,0]
#   [0.1, 0.8, 0.3]      [0,1,0]   [0,1,0]  exact
#   [0.6, 0.1, 0.7]      [0,0,1]   [1,0,1]
# x: TP 1 FP 1 FN 1 (P R F1 = 1/2); y and z perfect. micro: TP 5 FP 1 FN 1 -> 5/6.
ML_LABELS = ["x", "y", "z"]
ML_PROBS = np.array([[0.9, 0.2, 0.6], [0.4, 0.7, 0.1], [0.1, 0.8, 0.3], [0.6, 0.1, 0.7]])
ML_Y = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 0], [0, 0, 1]])


def multi_label_metrics(probs, y, labels, thresholds):
    """The metrics of the decisions a multi-label model with these thresholds makes."""
    return multi_label.metrics(MultiLabel(None, labels, thresholds).decide(probs), y, labels)


def test_multi_label_exact_match_and_prf():
    m = multi_label_metrics(ML_PROBS, ML_Y, ML_LABELS, np.full(3, 0.5))
    assert m["accuracy"] == pytest.approx(0.5)  # exact match, not per-label accuracy (10/12)
    assert m["per_class"]["x"]["f1"] == pytest.approx(0.5) and m["per_class"]["x"]["support"] == 2
    assert m["per_class"]["y"]["f1"] == 1.0 and m["per_class"]["z"]["f1"] == 1.0
    for key in ("precision_micro", "recall_micro", "f1_micro"):
        assert m[key] == pytest.approx(5 / 6)
    assert m["f1_macro"] == pytest.approx((0.5 + 1 + 1) / 3)


def test_multi_label_per_label_thresholds():
    # x at 0.35: pred x = [1,1,0,1] -> row 1 now exact; x: TP 2 FP 1 FN 0 -> P 2/3, R 1, F1 0.8
    m = multi_label_metrics(ML_PROBS, ML_Y, ML_LABELS, np.array([0.35, 0.5, 0.5]))
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["per_class"]["x"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["x"]["recall"] == pytest.approx(1.0)
    assert m["per_class"]["x"]["f1"] == pytest.approx(0.8)
    # x at 0.65: pred x = [1,0,0,0] -> rows 0, 2, 3 exact; x: P 1, R 1/2
    m = multi_label_metrics(ML_PROBS, ML_Y, ML_LABELS, np.array([0.65, 0.5, 0.5]))
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["per_class"]["x"]["precision"] == pytest.approx(1.0)
    assert m["per_class"]["x"]["recall"] == pytest.approx(0.5)


def test_tune_thresholds_separates_a_separable_label():
    probs = np.array([[0.3, 0.4, 0.8], [0.35, 0.2, 0.4], [0.1, 0.1, 0.7], [0.2, 0.3, 0.1]])
    y = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0]])
    t = multi_label.tune_thresholds(probs, y, default=0.42)
    assert t.shape == (3,)
    assert 0.2 < t[0] <= 0.3  # between the highest negative and the lowest positive
    assert t[1] == 0.42  # no positives: nothing to tune, keeps the default
    assert 0.4 < t[2] <= 0.7  # positives 0.8/0.7, negatives 0.4/0.1
    m = multi_label_metrics(probs, y, ["a", "b", "c"], t)
    assert m["per_class"]["a"]["f1"] == 1.0 and m["per_class"]["c"]["f1"] == 1.0
    assert m["accuracy"] == 1.0  # label b (probs < 0.42) is predicted nowhere


def test_tune_thresholds_leaves_rare_labels_at_the_default():
    # one positive, ranked below 50 negatives: its best F1 (2/52) would be at 0.05, predicting it for all 51 rows
    probs = np.column_stack([np.r_[0.05, np.linspace(0.1, 0.3, 50)], np.r_[0.9, np.full(50, 0.1)]])
    y = np.zeros((51, 2), int)
    y[0] = 1
    assert multi_label.tune_thresholds(probs, y, default=0.5, min_positives=1)[0] == pytest.approx(0.05)
    t = multi_label.tune_thresholds(probs, y, default=0.5, min_positives=2)
    assert t[0] == 0.5 and t[1] == 0.5


def test_tune_thresholds_maximises_f1_when_not_separable():
    # column x of ML_PROBS: positives 0.9, 0.4; negatives 0.6, 0.1.
    # threshold 0.9 -> F1 2/3; 0.6 -> 1/2; 0.4 -> 0.8 (best); 0.1 -> 2/3
    t = multi_label.tune_thresholds(ML_PROBS[:, :1], ML_Y[:, :1], default=0.5)
    assert t[0] == pytest.approx(0.4)


def logit(p):
    return np.log(p / (1 - p)).astype(np.float32)


def targets(y):
    return Encoded({}, np.zeros(len(y), int), torch.from_numpy(np.asarray(y)))


def test_score_single_label_loss_and_metrics():
    logits = np.zeros((6, 3), np.float32)
    result = SingleLabel(None, LABELS).score(logits, targets(Y))
    assert result["loss"] == pytest.approx(math.log(3), rel=1e-5)  # uniform prediction over 3 classes
    assert "thresholds" not in result
    result = SingleLabel(None, LABELS).score(one_hot_logits(PRED, high=50.0), targets(Y))
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["f1_macro"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert result["loss"] == pytest.approx(2 * 50 / 6, rel=1e-3)  # two confident mistakes out of six


def test_score_multi_label_tunes_thresholds():
    task = SimpleNamespace(threshold=0.5, tune_thresholds=True, tune_min_positives=1)
    result = MultiLabel(task, ML_LABELS).score(logit(ML_PROBS), targets(ML_Y), tune=True)
    assert len(result["thresholds"]) == 3
    assert result["thresholds"][0] == pytest.approx(0.4, abs=1e-5)  # tuned in probability space
    assert result["per_class"]["x"]["f1"] == pytest.approx(0.8)
    assert result["accuracy"] == pytest.approx(0.75)
    expected_loss = -np.mean(ML_Y * np.log(ML_PROBS) + (1 - ML_Y) * np.log(1 - ML_PROBS))
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-4)


def test_score_multi_label_fixed_threshold_without_tuning():
    task = SimpleNamespace(threshold=0.5, tune_thresholds=False, tune_min_positives=1)
    result = MultiLabel(task, ML_LABELS).score(logit(ML_PROBS), targets(ML_Y), tune=True)
    assert result["thresholds"] == [0.5, 0.5, 0.5]
    assert result["accuracy"] == pytest.approx(0.5)


def test_score_multi_label_uses_given_thresholds():
    given = np.array([0.65, 0.5, 0.5])  # a trained model's: evaluation scores at these
    result = MultiLabel(None, ML_LABELS, given).score(logit(ML_PROBS), targets(ML_Y))
    assert result["thresholds"] == pytest.approx([0.65, 0.5, 0.5])
    assert result["per_class"]["x"]["precision"] == pytest.approx(1.0)
    assert result["per_class"]["x"]["recall"] == pytest.approx(0.5)
    assert result["accuracy"] == pytest.approx(0.75)


def assert_png(path):
    raw = path.read_bytes()
    assert len(raw) > 1000 and raw[:8] == PNG


def test_plot_confusion(tmp_path):
    path = tmp_path / "cm.png"
    single_label.plot_confusion(PRED, Y, LABELS, str(path))
    assert_png(path)


def test_plot_pr_curves(tmp_path):
    path = tmp_path / "pr.png"
    y = np.c_[ML_Y, np.zeros(4, int)]  # a label without positives is skipped, not an error
    probs = np.c_[ML_PROBS, np.full(4, 0.2)]
    multi_label.plot_pr_curves(probs, y, ML_LABELS + ["none"], str(path))
    assert_png(path)


@pytest.mark.parametrize("metric", ["accuracy", "loss"])
def test_plot_training_curve(tmp_path, metric):
    history = [
        {"step": 1, "train_loss": 1.1, "lr": 1e-3},
        {"step": 2, "train_loss": 0.9, "lr": 1e-3},
        {"step": 2, "eval_loss": 0.95, "eval_accuracy": 0.5},
        {"step": 3, "train_loss": 0.7, "lr": 1e-3},
        {"step": 4, "train_loss": 0.5, "lr": 1e-3},
        {"step": 4, "eval_loss": 0.6, "eval_accuracy": 0.8},
    ]
    path = tmp_path / "curve.png"
    plot_training_curve(history, metric, str(path))
    assert_png(path)


def test_plot_training_curve_without_validation(tmp_path):
    path = tmp_path / "curve.png"
    plot_training_curve([{"step": 1, "train_loss": 1.0, "lr": 1e-3}], "accuracy", str(path))
    assert_png(path)


def test_better_and_headline():
    assert better("accuracy", 0.5, None)
    assert better("accuracy", 0.6, 0.5) and not better("accuracy", 0.5, 0.5)
    assert better("loss", 0.4, 0.5) and not better("loss", 0.6, 0.5)
    assert (
        tasks.headline(SingleLabel(None, LABELS), {"accuracy": 0.5, "f1_macro": 0.25, "loss": 1.0})
        == "accuracy=0.5000 f1_macro=0.2500"
    )


def test_evaluation_and_batch_inference_decide_alike():
    """What evaluate writes to predictions.jsonl and what infer writes come from the task's one decision."""
    cfg = SimpleNamespace(top_k=2, all_scores=False)
    multi = MultiLabel(cfg, ML_LABELS, np.array([0.35, 0.75, 0.5]))
    table = Table("t", ["a", "b", "c", "d"], None, [[], [], [], []], [1, 2, 3, 4])
    evaluated = [json.loads(line)["prediction"] for line in multi.prediction_rows(table, logit(ML_PROBS))]
    assert evaluated == [
        ["x", "z"],
        ["x"],
        ["y"],
        ["z", "x"],
    ]  # at or above each label's threshold, most probable first
    assert multi.outputs(ML_PROBS)["labels"].to_pylist() == evaluated
    single = SingleLabel(cfg, LABELS)
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]], np.float32)
    evaluated = [
        json.loads(line)["prediction"]
        for line in single.prediction_rows(Table("t", ["a", "b"], None, ["A", "A"], [1, 2]), logits)
    ]
    assert evaluated == ["B", "A"] == single.outputs(single.probabilities(logits))["label"].to_pylist()
