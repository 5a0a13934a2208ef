"""What batch inference does per task: encode rows into model inputs, predict them into output columns.

One class per task of recipes/tasks, keyed by the same name. The pipeline only calls `encode` (in the
read tasks, on the good rows of a block) and `predict` (in the predictor actors, on the encoded good
rows of a block); what travels between them is the Arrow columns `encode` returns.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recipes.errors import RecipeError

IDS = pa.list_(pa.int32())


@dataclass(frozen=True)
class Options:
    """The output options of conf/infer.yaml."""

    all_scores: bool
    top_k: int
    num_beams: Optional[int]  # seq2seq: null keeps the model's generation settings
    max_new_tokens: Optional[int]


@dataclass
class Encoded:
    columns: Dict[str, pa.Array]  # one value per encoded row: what `predict` reads
    truncated: List[bool]  # rows that lost tokens to max_length


def _lists(arr: pa.ListArray) -> List[np.ndarray]:
    offsets, values = arr.offsets.to_numpy(), arr.values.to_numpy()
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(arr))]


def _column(table: pa.Table, name: str) -> List[np.ndarray]:
    return _lists(table.column(name).combine_chunks())


def _truncating(tokenizer, texts: List[str], pairs: Optional[List[str]], max_length: int, token_types: bool):
    """(input_ids, token_type_ids or None, truncated) as training tokenized (truncation=True, max_length)."""
    if not texts:  # a block of bad rows only; tokenizers fail on empty lists
        return [], [] if token_types else None, []
    kwargs = dict(truncation=True, return_attention_mask=False, return_token_type_ids=token_types)
    # one token over the limit tells truncation apart without tokenizing an over-long text in full
    enc = tokenizer(texts, pairs, max_length=max_length + 1, **kwargs)
    ids, types = enc["input_ids"], enc.get("token_type_ids")
    over = [i for i, row in enumerate(ids) if len(row) > max_length]
    if over:
        again = tokenizer([texts[i] for i in over], [pairs[i] for i in over] if pairs is not None else None, max_length=max_length, **kwargs)
        for j, i in enumerate(over):
            ids[i] = again["input_ids"][j]
            if types is not None:
                types[i] = again["token_type_ids"][j]
    truncated = [False] * len(ids)
    for i in over:
        truncated[i] = True
    return ids, types, truncated


def _scores_column(probs: np.ndarray, labels: List[str], options: Options) -> Dict[str, pa.Array]:
    if not options.all_scores:
        return {}
    fields = [pa.array(probs[:, j], pa.float32()) for j in range(len(labels))]
    return {"scores": pa.StructArray.from_arrays(fields, names=labels)}


class _Classifier:
    pairs = True  # reads a text pair column when the model was trained on one

    def __init__(self, config, options: Options):
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.options = options

    def encode(self, tokenizer, texts: List[str], pairs: Optional[List[str]], max_length: int) -> Encoded:
        ids, types, truncated = _truncating(tokenizer, texts, pairs, max_length, token_types=pairs is not None)
        columns = {"input_ids": pa.array(ids, IDS)}
        if types is not None:  # zeros otherwise: the model's default
            columns["token_type_ids"] = pa.array(types, pa.list_(pa.int8()))
        return Encoded(columns, truncated)

    def predict(self, runner, table: pa.Table) -> Dict[str, pa.Array]:
        types = _column(table, "token_type_ids") if "token_type_ids" in table.column_names else None
        return self.outputs(runner.logits(_column(table, "input_ids"), types))


class SingleLabel(_Classifier):
    def outputs(self, logits: np.ndarray) -> Dict[str, pa.Array]:
        """`label` and its probability `score` (softmax); `scores`: every label's."""
        z = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        best = probs.argmax(axis=1)
        return {
            "label": pa.array([self.labels[j] for j in best], pa.string()),
            "score": pa.array(probs[np.arange(len(best)), best], pa.float32()),
            **_scores_column(probs, self.labels, self.options),
        }


TOP_K_TYPE = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32())]))


class MultiLabel(_Classifier):
    def __init__(self, config, options: Options):
        from recipes.tasks.multi_label import MultiLabel as Trained

        super().__init__(config, options)
        self.thresholds = Trained.from_model(config).thresholds  # tuned per label on validation, saved with the model

    def outputs(self, logits: np.ndarray) -> Dict[str, pa.Array]:
        """`labels` at or above their thresholds (most probable first), `top_k` labels with probabilities (sigmoid)."""
        probs = 1 / (1 + np.exp(-logits))
        order = np.argsort(-probs, axis=1, kind="stable")
        chosen = [[self.labels[j] for j in row if p[j] >= self.thresholds[j]] for row, p in zip(order, probs)]
        k = min(self.options.top_k, len(self.labels))
        top = [[{"label": self.labels[j], "score": float(p[j])} for j in row[:k]] for row, p in zip(order, probs)]
        return {
            "labels": pa.array(chosen, pa.list_(pa.string())),
            "top_k": pa.array(top, TOP_K_TYPE),
            **_scores_column(probs, self.labels, self.options),
        }


SPANS_TYPE = pa.list_(pa.struct([("text", pa.string()), ("type", pa.string()), ("start", pa.int32()), ("end", pa.int32()),
                                 ("score", pa.float32())]))


class TokenClassification:
    """`spans`: the entities (keyphrases) of each text, with character offsets and the mean probability of their tags.

    Words are what the model's tokenizer splits a text into before sub-words (whitespace and punctuation
    for BERT); a text longer than max_length is cut into overlapping windows, as in training, never truncated.
    """

    pairs = False

    def __init__(self, config, options: Options):
        from recipes.tasks.token_classification import TokenClassification as Trained

        trained = Trained.from_model(config)
        self.labels, self.overlap = trained.labels, trained.window_overlap

    def encode(self, tokenizer, texts: List[str], pairs: Optional[List[str]], max_length: int) -> Encoded:
        if not texts:  # a block of bad rows only; tokenizers fail on empty lists
            empty = pa.array([], IDS)
            return Encoded({"text": pa.array([], pa.string()), "windows": pa.array([], pa.list_(IDS)), "word_ids": pa.array([], pa.list_(IDS)),
                            "word_offsets": empty}, [])
        enc = tokenizer(texts, truncation=True, max_length=max_length, stride=min(self.overlap, max_length // 2),
                        return_overflowing_tokens=True, return_offsets_mapping=True, return_attention_mask=False,
                        return_token_type_ids=False)
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
            "windows": pa.array(windows, pa.list_(IDS)),
            "word_ids": pa.array(words, pa.list_(IDS)),
            "word_offsets": pa.array([[c for i in range(n) for c in s.get(i, (0, 0))] for s, n in zip(spans, n_words)], IDS),
        }
        return Encoded(columns, [False] * len(texts))

    def predict(self, runner, table: pa.Table) -> Dict[str, pa.Array]:
        from seqeval.metrics.sequence_labeling import get_entities

        from recipes.tasks.token_classification import merge_windows

        windows = table.column("windows").combine_chunks()
        owner = np.repeat(np.arange(len(windows)), pc.list_value_length(windows).to_numpy(zero_copy_only=False))
        word_ids = [[None if i < 0 else i for i in w.tolist()] for w in _lists(table.column("word_ids").combine_chunks().flatten())]
        best = merge_windows(runner.token_logits(_lists(windows.flatten())), owner, word_ids, len(windows))
        texts, offsets = table.column("text").to_pylist(), _column(table, "word_offsets")
        out = []
        for found, text, offset in zip(best, texts, offsets):
            tags = [self.labels[found[i][0]] if i in found else "O" for i in range(len(offset) // 2)]
            spans = []
            for kind, first, last in get_entities(tags):
                start, end = int(offset[2 * first]), int(offset[2 * last + 1])
                score = float(np.mean([found[i][1] for i in range(first, last + 1) if i in found]))
                spans.append({"text": text[start:end], "type": kind, "start": start, "end": end, "score": score})
            out.append(spans)
        return {"spans": pa.array(out, SPANS_TYPE)}


class Seq2Seq:
    """`generated_text`: the model's output for each text, by its saved generation settings (beams, length)."""

    pairs = False

    def __init__(self, config, options: Options):
        self.options = options

    def encode(self, tokenizer, texts: List[str], pairs: Optional[List[str]], max_length: int) -> Encoded:
        ids, _, truncated = _truncating(tokenizer, texts, None, max_length, token_types=False)
        return Encoded({"input_ids": pa.array(ids, IDS)}, truncated)

    def predict(self, runner, table: pa.Table) -> Dict[str, pa.Array]:
        settings = {k: v for k, v in (("num_beams", self.options.num_beams), ("max_new_tokens", self.options.max_new_tokens)) if v is not None}
        return {"generated_text": pa.array(runner.generate(_column(table, "input_ids"), **settings), pa.string())}


TASKS = {"single_label": SingleLabel, "multi_label": MultiLabel, "token_classification": TokenClassification, "seq2seq": Seq2Seq}


def for_model(config, options: Options, where: str):
    """The inference side of the task a model was trained for."""
    from recipes import tasks

    name = tasks.of_model(config, where).name
    if name not in TASKS:
        raise RecipeError(f"{where}: a {name} model; batch inference runs {', '.join(TASKS)} models")
    return TASKS[name](config, options)
