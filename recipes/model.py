"""Loading and saving classifiers in Hugging Face format (from_pretrained-compatible)."""
import os
from typing import Dict, List, Optional

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from recipes import storage
from recipes.errors import RecipeError

PROBLEM_TYPES = {"single_label": "single_label_classification", "multi_label": "multi_label_classification"}


def attn_implementation(requested: Optional[str], device: torch.device, dtype: torch.dtype) -> str:
    # PyTorch's CPU SDPA backward is ~20x slower in bf16 than the eager matmul path
    # (measured on a Xeon with AMX); everywhere else SDPA is the better default.
    if requested:
        return requested
    return "eager" if device.type == "cpu" and dtype == torch.bfloat16 else "sdpa"


def _resolve(name_or_path: str) -> str:
    """A local directory for paths and URLs; Hub ids ("org/name", at most one slash) pass through."""
    path = os.path.expanduser(storage.local_model_dir(name_or_path))
    if os.path.isdir(path):
        return path
    if path.startswith((".", "/")) or path.count("/") > 1 or os.path.exists(path):
        raise RecipeError(f"model path {name_or_path}: no such directory")
    return path


def _from_pretrained(cls, name_or_path: str, **kwargs):
    try:
        return cls.from_pretrained(_resolve(name_or_path), **kwargs)
    except (OSError, ValueError, SafetensorError) as e:  # offline Hub, unknown id, missing or damaged files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecipeError(f"model {name_or_path}: cannot load ({reason})") from None


def model_dir_of(path: str) -> str:
    """A trained model directory: `path` itself, or `path`/model when `path` is the run directory."""
    if not storage.exists(storage.join(path, "config.json")) and storage.exists(storage.join(path, "model", "config.json")):
        return storage.join(path, "model")
    return path


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


def load_tokenizer(name_or_path: str, max_length: Optional[int] = None):
    path = os.path.expanduser(name_or_path)
    # without its files AutoTokenizer builds an empty vocabulary and every text becomes [UNK]s
    if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise RecipeError(f"model {name_or_path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); save the tokenizer with the model")
    tokenizer = _from_pretrained(AutoTokenizer, name_or_path)
    if max_length:
        config = _from_pretrained(AutoConfig, name_or_path)
        # RoBERTa-style models offset positions by the padding index: two positions fewer
        limit = getattr(config, "max_position_embeddings", None)
        limit = limit - 2 if limit and "roberta" in config.model_type else limit
        if limit and max_length > limit:
            raise RecipeError(f"model.max_length={max_length}: {name_or_path} has {limit} positions; expected at most {limit}")
        tokenizer.model_max_length = max_length  # saved with the model, so evaluation truncates the same way
    return tokenizer


def load_pretrained(name_or_path: str, labels: List[str], task: str, attn: str) -> torch.nn.Module:
    """A pretrained encoder with a fresh classification head for `labels`."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" report is expected here
    try:
        return _from_pretrained(
            AutoModelForSequenceClassification,
            name_or_path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={l: i for i, l in enumerate(labels)},
            problem_type=PROBLEM_TYPES[task],
            attn_implementation=attn,
        )
    finally:
        hf_logging.set_verbosity(verbosity)


def load_trained(path: str, attn: str):
    """A model directory written by training, with its tokenizer."""
    name, path = path, _resolve(path)  # download a remote model once, not once per file type
    config = _from_pretrained(AutoConfig, path)
    if config.problem_type not in PROBLEM_TYPES.values():
        raise RecipeError(f"{name}: not a classifier trained by text-recipes (config.problem_type={config.problem_type!r})")
    model = _from_pretrained(AutoModelForSequenceClassification, path, attn_implementation=attn)
    return model, _from_pretrained(AutoTokenizer, path)


class CPUDropout(torch.nn.Dropout):
    """nn.Dropout with masks drawn 16 bits per element from the torch generator, four per 64-bit draw.

    PyTorch's CPU dropout draws one Bernoulli sample per element, serially; that is ~15% of a
    MiniLM training step on CPU. This draws a quarter of the random numbers, so it is ~3x faster,
    stays seeded and resumable with the same RNG state, and drops with p rounded to 1/65536.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
        bits = words.view(torch.int16)[: x.numel()].view(x.shape)  # uniform over [-32768, 32767]
        keep = bits >= round(self.p * 65536) - 32768
        return x * keep.to(x.dtype).mul_(1 / (1 - self.p))  # the same scaling as torch's dropout


def set_dropout(model: torch.nn.Module, p: Optional[float]) -> None:
    """Every dropout in the model (hidden, attention, classifier) drops with probability p; None keeps the model's own."""
    if p is None:
        return
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p


def use_cpu_dropout(model: torch.nn.Module) -> None:
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is torch.nn.Dropout:
                setattr(module, name, CPUDropout(child.p))


def task_of(config) -> str:
    return "multi_label" if config.problem_type == PROBLEM_TYPES["multi_label"] else "single_label"


def thresholds_of(config, default: float = 0.5) -> torch.Tensor:
    saved: Dict[str, float] = getattr(config, "label_thresholds", None) or {}
    return torch.tensor([saved.get(config.id2label[i], default) for i in range(config.num_labels)])
