"""Token classification (keyphrases, named entities): a BIO tag per word, entity-level metrics with seqeval.

Words are split into sub-tokens; the first sub-token of each word carries its tag (all of them with
label_all_subtokens). Documents longer than model.max_length are cut into overlapping windows, and
each word is predicted by the window where it sits farthest from an edge, so nothing is truncated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from omegaconf import MISSING

from recipes import blocks
from recipes.config import require
from recipes.errors import RecipeError
from recipes.lazy import lazy

torch = lazy("torch")
F = lazy("torch.nn.functional")
transformers = lazy("transformers")
seqeval_metrics = lazy("seqeval.metrics")
seqeval_labeling = lazy("seqeval.metrics.sequence_labeling")
data = lazy("recipes.data")
model_loading = lazy("recipes.model")
predict = lazy("recipes.predict")
plots = lazy("recipes.plots")

METRICS = ("f1", "precision", "recall", "loss")
OPTIONS = ()


@dataclass
class Config:
    type: str = MISSING
    metric: str = (
        MISSING  # validation metric that picks the best checkpoint: entity-level f1, precision, recall, or loss
    )
    label_all_subtokens: bool = (
        MISSING  # false: only a word's first sub-token is labelled (the others are ignored by the loss)
    )
    window_overlap: int = MISSING  # sub-tokens shared by consecutive windows of a document longer than model.max_length


def check(cfg) -> None:
    require(cfg.window_overlap >= 0, "task.window_overlap", cfg.window_overlap, "must be >= 0")


@dataclass
class Table:
    source: str
    tokens: List[List[str]]  # words of each document
    tags: List[List[str]]  # one BIO tag per word
    rows: List[int]  # where each document starts (line of a CoNLL file, row of a table)


@dataclass
class Windows:
    doc: List[int]  # the document of each window
    words: List[List[Optional[int]]]  # per window position: the word's index in its document, None for special tokens
    gold: List[List[str]]  # every document's tags


@dataclass
class Predictions:
    tags: List[List[str]]
    loss: float


def _strings(value, source: str, row: int, column: str, what: str) -> List[str]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise RecipeError(
            f"{source} row {row}: column {column!r} holds {type(value).__name__} {str(value)[:40]!r}; "
            f"expected a non-empty list of {what}"
        )
    for v in value:
        if not isinstance(v, str) or not v.strip():
            raise RecipeError(
                f"{source} row {row}: {what[:-1]} {v!r} in column {column!r}; expected a non-empty string"
            )
    return [v.strip() for v in value]


def _is_bio(tag: str) -> bool:
    return tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2)


class TokenClassification:
    name = "token_classification"
    reads_pairs = False
    onnx = True
    HEADLINE = ("precision", "recall", "f1")

    def __init__(self, cfg, labels: Optional[List[str]] = None):
        self.cfg = cfg  # the task config; a trained model's as saved with it
        self.labels = labels

    @classmethod
    def from_model(cls, config, cfg):
        return cls(cfg, [config.id2label[i] for i in range(config.num_labels)])

    @staticmethod
    def model_class():
        return transformers.AutoModelForTokenClassification

    # ---- data
    def table(self, df, source: str, data_cfg, rows: Optional[List[int]] = None) -> Table:
        rows = rows if rows is not None else list(range(1, len(df) + 1))
        data.require_columns(df, source, data_cfg, ("text_column", "label_column"))
        tokens, tags = [], []
        for words, labels, row in zip(df[data_cfg.text_column].tolist(), df[data_cfg.label_column].tolist(), rows):
            words = _strings(words, source, row, data_cfg.text_column, "tokens")
            labels = _strings(labels, source, row, data_cfg.label_column, "tags")
            if len(words) != len(labels):
                raise RecipeError(
                    f"{source} row {row}: {len(words)} tokens but {len(labels)} tags; expected one tag per token"
                )
            bad = next((t for t in labels if not _is_bio(t)), None)
            if bad is not None:
                raise RecipeError(f"{source} row {row}: tag {bad!r} is not a BIO tag; expected O, B-<type> or I-<type>")
            tokens.append(words)
            tags.append(labels)
        if not tokens:
            raise RecipeError(f"{source}: no documents")
        return Table(source, tokens, tags, rows)

    def fit(self, train: Table) -> None:
        types = sorted({t[2:] for doc in train.tags for t in doc if t != "O"})
        if not types:
            raise RecipeError(f"{train.source}: every tag is O; the training data needs entities (B-<type>, I-<type>)")
        self.labels = ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]

    @property
    def vocabulary(self) -> List[str]:
        return self.labels

    def encode(self, table: Table, tokenizer, max_length: int) -> data.Encoded:
        index = {l: i for i, l in enumerate(self.labels)}
        for doc, row in zip(table.tags, table.rows):
            unknown = next((t for t in doc if t not in index), None)
            if unknown is not None:
                raise RecipeError(
                    f"{table.source} row {row}: tag {unknown!r} was not seen in training "
                    f"(model tags: {', '.join(self.labels)})"
                )
        if not tokenizer.is_fast:
            raise RecipeError(f"{tokenizer.name_or_path}: token classification needs a fast tokenizer (word alignment)")
        overlap = min(self.cfg.window_overlap, max_length // 2)  # a window must move forward
        enc = tokenizer(
            table.tokens,
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            stride=overlap,
            return_overflowing_tokens=True,
        )
        docs = list(enc["overflow_to_sample_mapping"])
        words = [enc.word_ids(w) for w in range(len(docs))]
        labels = []
        for doc, ids in zip(docs, words):
            tags, row, previous = table.tags[doc], [], None
            for w in ids:
                if w is None or (w == previous and not self.cfg.label_all_subtokens):
                    row.append(data.IGNORE)
                else:  # a word's later sub-tokens continue its entity: I-, not B-
                    tag = tags[w] if w != previous else tags[w].replace("B-", "I-", 1)
                    row.append(index[tag])
                previous = w
            labels.append(row)
        features = {k: enc[k] for k in ("input_ids", "token_type_ids") if k in enc}
        return data.Encoded(
            features, np.array([len(x) for x in enc["input_ids"]]), labels, Windows(docs, words, table.tags)
        )

    # ---- model
    def new_model(self, name_or_path: str, attn: str, train: data.Encoded, tokenizer):
        return model_loading.from_pretrained_quietly(
            self.model_class(),
            name_or_path,
            num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
            label2id={l: i for i, l in enumerate(self.labels)},
            attn_implementation=attn,
        )

    def loss(self, model, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        targets = batch.pop("labels")
        logits = model(**batch).logits.float()
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=data.IGNORE)

    # ---- evaluation
    def predict(self, model, encoded: data.Encoded, rt, batch_size: int, dtype: torch.dtype, tokenizer) -> Predictions:
        def per_window(batch):
            targets = batch.pop("labels")
            with torch.autocast(rt.device.type, dtype=dtype, enabled=dtype != torch.float32):
                logits = model(**batch).logits.float()
            losses = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=data.IGNORE, reduction="none").sum(1)
            counts = (targets != data.IGNORE).sum(1)
            return [
                (lg[: int(n)].cpu().numpy(), float(l), int(c))
                for lg, n, l, c in zip(logits, batch["attention_mask"].sum(1), losses, counts)
            ]

        out = predict.over_batches(model, encoded, rt, batch_size, tokenizer.pad_token_id, per_window)
        w = encoded.extra
        best = merge_windows([logits for logits, _, _ in out], w.doc, w.words, len(w.gold))
        tags = [self.decide(found, len(gold)) for found, gold in zip(best, w.gold)]
        tokens = sum(c for _, _, c in out)
        return Predictions(tags, sum(l for _, l, _ in out) / tokens if tokens else 0.0)

    def decide(self, found: Dict[int, Tuple[int, float]], n_words: int) -> List[str]:
        """A document's tags, from merge_windows' (tag id, probability) per word: for evaluation and batch inference
        alike. A word no sub-token stands for (e.g. a lone control character) is O."""
        return [self.labels[found[i][0]] if i in found else "O" for i in range(n_words)]

    def score(self, predictions: Predictions, encoded: data.Encoded, tune: bool = False) -> Dict:
        report = seqeval_metrics.classification_report(
            encoded.extra.gold, predictions.tags, output_dict=True, zero_division=0
        )
        micro = report["micro avg"]
        per_type = {
            k: {
                "precision": float(v["precision"]),
                "recall": float(v["recall"]),
                "f1": float(v["f1-score"]),
                "support": int(v["support"]),
            }
            for k, v in report.items()
            if not k.endswith(" avg")
        }
        return {
            "loss": predictions.loss,
            "precision": float(micro["precision"]),
            "recall": float(micro["recall"]),
            "f1": float(micro["f1-score"]),
            "per_type": per_type,
        }

    def save(self, config, result: Dict) -> None:
        pass

    def prediction_rows(self, table: Table, predictions: Predictions) -> List[str]:
        def spans(words, tags):
            return [
                {"text": " ".join(words[s : e + 1]), "type": t, "start": s, "end": e + 1}
                for t, s, e in seqeval_labeling.get_entities(tags)
            ]

        return [
            json.dumps(
                {
                    "row": row,
                    "tokens": words,
                    "tags": gold,
                    "prediction": pred,
                    "spans": spans(words, pred),
                    "gold_spans": spans(words, gold),
                },
                ensure_ascii=False,
            )
            + "\n"
            for row, words, gold, pred in zip(table.rows, table.tokens, table.tags, predictions.tags)
        ]

    def plots(self, run, predictions: Predictions, encoded: data.Encoded) -> List[str]:
        result = self.score(predictions, encoded)
        run.write("entity_scores.png", lambda path: plot_entity_scores(result["per_type"], path))
        return ["entity_scores.png"]

    # ---- batch inference: `spans`, the entities (keyphrases) of each text, with character offsets and the mean
    # probability of their tags. Words are what the tokenizer splits a text into before sub-words (whitespace and
    # punctuation for BERT); a text longer than max_length is cut into overlapping windows, as in training.
    def encode_block(self, tokenizer, texts: List[str], pairs: Optional[List[str]], max_length: int) -> blocks.Encoded:
        if not texts:  # a block of bad rows only; tokenizers fail on empty lists
            empty = pa.array([], blocks.IDS)
            return blocks.Encoded(
                {
                    "text": pa.array([], pa.string()),
                    "windows": pa.array([], pa.list_(blocks.IDS)),
                    "word_ids": pa.array([], pa.list_(blocks.IDS)),
                    "word_offsets": empty,
                },
                [],
            )
        enc = tokenizer(
            texts,
            truncation=True,
            max_length=max_length,
            stride=min(self.cfg.window_overlap, max_length // 2),
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        windows: List[list] = [[] for _ in texts]
        words: List[list] = [[] for _ in texts]
        spans: List[dict] = [{} for _ in texts]  # per text: word -> [first char, last char + 1]
        for w, doc in enumerate(enc["overflow_to_sample_mapping"]):
            ids = enc.word_ids(w)
            windows[doc].append(enc["input_ids"][w])
            words[doc].append([-1 if i is None else i for i in ids])
            for i, (start, end) in zip(ids, enc["offset_mapping"][w]):
                if i is not None:
                    span = spans[doc].setdefault(i, [start, end])
                    span[0], span[1] = min(span[0], start), max(span[1], end)
        n_words = [max(s) + 1 if s else 0 for s in spans]
        columns = {
            "text": pa.array(texts, pa.string()),
            "windows": pa.array(windows, pa.list_(blocks.IDS)),
            "word_ids": pa.array(words, pa.list_(blocks.IDS)),
            "word_offsets": pa.array(
                [[c for i in range(n) for c in s.get(i, (0, 0))] for s, n in zip(spans, n_words)], blocks.IDS
            ),
        }
        return blocks.Encoded(columns, [False] * len(texts))

    def predict_block(self, runner, table: pa.Table) -> Dict[str, pa.Array]:
        windows = table.column("windows").combine_chunks()
        owner = np.repeat(np.arange(len(windows)), pc.list_value_length(windows).to_numpy(zero_copy_only=False))
        word_ids = [
            [None if i < 0 else i for i in w.tolist()]
            for w in blocks.lists(table.column("word_ids").combine_chunks().flatten())
        ]
        best = merge_windows(runner.token_logits(blocks.lists(windows.flatten())), owner, word_ids, len(windows))
        texts, offsets = table.column("text").to_pylist(), blocks.column(table, "word_offsets")
        out = []
        for found, text, offset in zip(best, texts, offsets):
            spans = []
            for kind, first, last in seqeval_labeling.get_entities(self.decide(found, len(offset) // 2)):
                start, end = int(offset[2 * first]), int(offset[2 * last + 1])
                score = float(np.mean([found[i][1] for i in range(first, last + 1) if i in found]))
                spans.append({"text": text[start:end], "type": kind, "start": start, "end": end, "score": score})
            out.append(spans)
        return {"spans": pa.array(out, SPANS_TYPE)}


SPANS_TYPE = pa.list_(
    pa.struct(
        [
            ("text", pa.string()),
            ("type", pa.string()),
            ("start", pa.int32()),
            ("end", pa.int32()),
            ("score", pa.float32()),
        ]
    )
)


def merge_windows(
    logits: List[np.ndarray], docs: List[int], words: List[List[Optional[int]]], n_docs: int
) -> List[Dict[int, Tuple[int, float]]]:
    """Per document: word -> (tag id, its probability), from the window where the word's first sub-token sits
    farthest from an edge (the most context on both sides)."""
    best: List[Dict[int, Tuple[int, int, float]]] = [
        {} for _ in range(n_docs)
    ]  # word -> (distance, tag id, probability)
    for window, doc, ids in zip(logits, docs, words):
        previous = None
        for pos, word in enumerate(ids[: len(window)]):
            if word is not None and word != previous:
                distance = min(pos, len(window) - 1 - pos)
                if word not in best[doc] or distance > best[doc][word][0]:
                    z = np.exp(window[pos] - window[pos].max())
                    tag = int(z.argmax())
                    best[doc][word] = (distance, tag, float(z[tag] / z.sum()))
            previous = word
    return [{word: (tag, p) for word, (_, tag, p) in found.items()} for found in best]


def plot_entity_scores(per_type: Dict[str, Dict], path: str) -> None:
    """Precision, recall and F1 per entity type, with the number of gold entities."""
    types = sorted(per_type)
    fig, ax = plots.subplots(figsize=(max(5, 1.2 * len(types) + 2), 4))
    x = np.arange(len(types))
    for i, key in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (i - 1) * 0.27, [per_type[t][key] for t in types], width=0.27, label=key)
    ax.set_xticks(x, [f"{t}\n({per_type[t]['support']})" for t in types])
    ax.set_ylim(0, 1)
    ax.set_title("Entity-level scores per type (gold entities)")
    ax.legend()
    plots.save(fig, path)


TASK = TokenClassification
