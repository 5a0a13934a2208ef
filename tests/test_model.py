"""Unit tests of dropout settings and the CPU training speed-ups (precision choice, CPUDropout, clip_gradients)."""

import time

import pytest
import torch

from recipes import runtime
from recipes.model import CPUDropout, set_dropout, use_cpu_dropout
from recipes.train import clip_gradients


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_dropout_matches_torch_dropout_statistics(dtype):
    torch.manual_seed(0)
    x = torch.ones(500, 1000, dtype=dtype, requires_grad=True)
    y = CPUDropout(0.1)(x)
    dropped = (y == 0).float()
    assert abs(dropped.mean().item() - 0.1) < 0.002
    # the four 16-bit lanes of each random word are independent draws
    assert dropped.view(-1, 4).mean(0).sub(0.1).abs().max() < 0.003
    assert torch.corrcoef(torch.stack([dropped.flatten()[:-1], dropped.flatten()[1:]]))[0, 1].abs() < 0.01
    kept = y[y != 0]
    reference = torch.nn.functional.dropout(torch.ones(100, dtype=dtype), 0.1, training=True).max()
    assert torch.all(kept == reference)  # the same 1/(1-p) scale, rounded as torch rounds it for this dtype
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)


def test_cpu_dropout_is_seeded_and_off_in_eval():
    drop = CPUDropout(0.3)
    x = torch.randn(64, 33)
    torch.manual_seed(5)
    a = drop(x)
    torch.manual_seed(5)
    assert torch.equal(a, drop(x))
    assert not torch.equal(a, drop(x))  # the generator moved on
    drop.eval()
    assert torch.equal(drop(x), x)


def test_use_cpu_dropout_replaces_every_dropout_module(tiny_model):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    before = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    use_cpu_dropout(model)
    after = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert before and all(type(m) is CPUDropout for m in after)
    assert [m.p for m in after] == before


def test_set_dropout_sets_every_dropout_and_none_keeps_the_models_own(tiny_model):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2).train()
    set_dropout(model, None)
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    x = torch.randint(1000, 2000, (4, 12))
    assert not torch.equal(model(input_ids=x).logits, model(input_ids=x).logits)
    set_dropout(model, 0.0)
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}
    # attention dropout reads its module's p too: in train mode the model is now deterministic
    torch.testing.assert_close(model(input_ids=x).logits, model(input_ids=x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("scale", [0.01, 100.0])  # below and above max_norm
def test_clip_gradients_matches_clip_grad_norm(scale):
    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    x = torch.randn(16, 8)
    for model in (a, b):
        (model(x).sum() * scale).backward()
    torch.nn.utils.clip_grad_norm_(a.parameters(), 1.0)
    clip_gradients(b, 1.0)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=0, atol=0)


def test_auto_precision_is_fp32_on_cpus_without_native_bf16(monkeypatch):
    runtime.cpu_bf16_is_faster.cache_clear()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert runtime.autocast_dtype("auto", torch.device("cpu")) == torch.float32
    runtime.cpu_bf16_is_faster.cache_clear()


def test_auto_precision_follows_the_measurement_on_cpus_with_bf16(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    for bf16_faster, expected in ((True, torch.bfloat16), (False, torch.float32)):
        # matmuls that only sleep stand in for the two precisions: this CPU's real speeds must not matter
        slow = torch.float32 if bf16_faster else torch.bfloat16

        def linear(a, b, slow=slow):
            time.sleep(0.01 if a.dtype == slow else 0.001)

        monkeypatch.setattr(torch.nn.functional, "linear", linear)
        runtime.cpu_bf16_is_faster.cache_clear()
        assert runtime.autocast_dtype("auto", torch.device("cpu")) == expected
    runtime.cpu_bf16_is_faster.cache_clear()
    assert runtime.autocast_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert runtime.autocast_dtype("fp32", torch.device("cpu")) == torch.float32
