from __future__ import annotations

import pytest
import torch

from gptlite.training.clipping import clip_grad_norm, total_grad_norm
from tests.training.conftest import reset_accelerate


@pytest.fixture
def accelerator():
    from accelerate import Accelerator

    yield Accelerator(cpu=True)
    reset_accelerate()


def parameters_with_grads(scale: float) -> list[torch.nn.Parameter]:
    shapes = [(300, 70), (70,), (1, 5, 9), (4000,)]
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in shapes]
    for p in params:
        p.grad = torch.randn(p.shape) * scale
    return params


@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_clipping_equals_torchs(accelerator, scale):
    ours, theirs = parameters_with_grads(scale), parameters_with_grads(scale)
    for a, b in zip(ours, theirs):
        b.grad.copy_(a.grad)
    before = [p.grad.clone() for p in ours]
    norm = clip_grad_norm(accelerator, ours, 1.0)
    want = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert norm == pytest.approx(want.item(), rel=1e-6)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=0)
    if norm <= 1.0:  # under the limit the gradients are not touched at all
        assert all(torch.equal(p.grad, g) for p, g in zip(ours, before))
    else:
        total = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in ours))
        assert total.item() == pytest.approx(1.0, rel=1e-5)


def test_total_norm_is_accurate_on_large_and_bf16_gradients():
    big = torch.randn(5_000_000) * 1e-3
    small = torch.randn(1000, dtype=torch.bfloat16)
    want = torch.sqrt((big.double() ** 2).sum() + (small.double() ** 2).sum()).item()
    assert total_grad_norm([big, small]).item() == pytest.approx(want, rel=1e-5)
    assert total_grad_norm([]).item() == 0.0
