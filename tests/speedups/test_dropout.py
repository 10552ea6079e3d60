"""gptlite.speedups.dropout: dropout masks from 15-bit draws, the same in distribution as torch's."""

import math

import pytest
import torch

from gptlite.speedups import dropout as fast_dropout
from gptlite.speedups.dropout import apply_dropout


@pytest.mark.parametrize("compiled_from", [1 << 18, 1 << 62])  # the compiled kernel's masks; the Mersenne Twister's
@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_dropout_drops_at_rate_p_scales_exactly_and_backpropagates_its_mask(p, dtype, compiled_from, monkeypatch):
    monkeypatch.setattr(fast_dropout, "COMPILED_MASK_ELEMENTS", compiled_from)
    x = torch.ones(400_001, dtype=dtype, requires_grad=True)  # not a multiple of 4: the last draw is part-used
    y = apply_dropout(x, p, training=True, fast=True)
    kept_value = 32768 / (32768 - round(p * 32768))
    values = set(y.detach().float().unique().tolist())
    assert values == {0.0, torch.tensor(kept_value, dtype=dtype).item()}
    dropped = (y == 0).float()
    # All four 16-bit quarters of every 64-bit draw must drop at rate p (one of them holds the sign bit).
    for quarter in range(4):
        lane = dropped[quarter::4]
        assert abs(lane.mean().item() - p) < 5 * math.sqrt(p * (1 - p) / lane.numel())
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())
    assert apply_dropout(x, p, training=False, fast=True) is x
    assert apply_dropout(x, 0.0, training=True, fast=True) is x


def test_fast_dropout_off_is_torchs_dropout_draw_for_draw():
    x = torch.randn(5, 7)
    torch.manual_seed(3)
    ours = apply_dropout(x, 0.3, training=True, fast=False)
    torch.manual_seed(3)
    assert torch.equal(ours, torch.nn.functional.dropout(x, 0.3, training=True))
