"""Loading pretrained and trained models in Hugging Face format (from_pretrained-compatible), and dropout on CPU."""

import os
from contextlib import contextmanager
from typing import Optional

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoTokenizer
from transformers.utils import logging as hf_logging

from recipes import storage
from recipes.errors import RecipeError


def attn_implementation(requested: Optional[str], device: torch.device, dtype: torch.dtype) -> str:
    # PyTorch's CPU SDPA backward is ~20x slower in bf16 than the eager matmul path
    # (measured on a Xeon with AMX); everywhere else SDPA is the better default.
    if requested:
        return requested
    return "eager" if device.type == "cpu" and dtype == torch.bfloat16 else "sdpa"


def resolve(name_or_path: str) -> str:
    """A local directory for paths and URLs; Hub ids ("org/name", at most one slash) pass through."""
    path = os.path.expanduser(storage.local_model_dir(name_or_path))
    if os.path.isdir(path):
        return path
    if path.startswith((".", "/")) or path.count("/") > 1 or os.path.exists(path):
        raise RecipeError(f"model path {name_or_path}: no such directory")
    return path


def from_pretrained(cls, name_or_path: str, **kwargs):
    try:
        return cls.from_pretrained(resolve(name_or_path), **kwargs)
    except (OSError, ValueError, SafetensorError) as e:  # offline Hub, unknown id, missing or damaged files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecipeError(f"model {name_or_path}: cannot load ({reason})") from None


def model_dir_of(path: str) -> str:
    """A trained model directory: `path` itself, or `path`/model when `path` is the run directory."""
    if not storage.exists(storage.join(path, "config.json")) and storage.exists(
        storage.join(path, "model", "config.json")
    ):
        return storage.join(path, "model")
    return path


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def load_tokenizer(name_or_path: str, max_length: Optional[int] = None):
    path = os.path.expanduser(name_or_path)
    # without its files AutoTokenizer builds an empty vocabulary and every text becomes [UNK]s
    if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise RecipeError(
            f"model {name_or_path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
            "save the tokenizer with the model"
        )
    tokenizer = from_pretrained(AutoTokenizer, name_or_path)
    if max_length:
        config = from_pretrained(AutoConfig, name_or_path)
        # RoBERTa-style models offset positions by the padding index: two positions fewer
        limit = getattr(config, "max_position_embeddings", None)
        limit = limit - 2 if limit and "roberta" in config.model_type else limit
        if limit and max_length > limit:
            raise RecipeError(
                f"model.max_length={max_length}: {name_or_path} has {limit} positions; expected at most {limit}"
            )
        tokenizer.model_max_length = max_length  # saved with the model, so evaluation truncates the same way
    return tokenizer


@contextmanager
def quiet_loading():
    """For a pretrained model given a new task head: the "newly initialized weights" report is expected there."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def from_pretrained_quietly(cls, name_or_path: str, **kwargs) -> torch.nn.Module:
    with quiet_loading():
        return from_pretrained(cls, name_or_path, **kwargs)


def init_bias_to_prior(model: torch.nn.Module, label_frequency: torch.Tensor) -> None:
    """Start each sigmoid output at its label's training frequency (Lin et al., 2017, "prior" init).

    With many rare labels and a zero bias, BCE is lowest when every output is near 0, and the
    fastest way there is not the bias (which moves lr per step) but the encoder: it collapses to
    one constant representation that the head maps to large negative logits, and stays there.
    """
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == len(label_frequency)][-1]
    p = label_frequency.clamp(1e-4, 1 - 1e-4)
    with torch.no_grad():
        head.bias.copy_(torch.log(p / (1 - p)))


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
    """Every dropout in the model (hidden, attention, classifier) drops with probability p; None keeps the model's
    own."""
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
