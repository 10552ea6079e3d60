"""gptlite.speedups.kernels: compiled elementwise kernels of CPU training (GELU, dropout); ATen's where they cannot."""

import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F

from gptlite.modeling_gptlite import GELU
from gptlite.speedups import kernels as cpu_kernels
from gptlite.speedups.dropout import apply_dropout
from gptlite.speedups.kernels import FusedGELU, hashed_dropout, tanh_gelu
from gptlite.training.config import TrainConfig
from gptlite.training.runtime import build_model

# torch.compile's CPU backend builds C++: without a compiler the kernels run eagerly (tested below), and the
# tests that the compiled kernels themselves ran cannot apply.
needs_a_compiler = pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")), reason="torch.compile needs a C++ compiler"
)

BF16_STEP = 2**-7  # the spacing of bf16 values in [1, 2): one rounding moves a value by at most half of it


def _exact_gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x.double(), approximate="tanh")


def _inputs(n: int = 5000) -> torch.Tensor:
    torch.manual_seed(0)
    return (torch.randn(n) * 3).to(torch.bfloat16)  # well into both tails


@pytest.fixture
def fresh_kernels(monkeypatch):
    """The module's kernels and its failure record as if nothing had been compiled in this process yet."""
    monkeypatch.setattr(cpu_kernels, "_compiled", {})
    monkeypatch.setattr(cpu_kernels, "_unavailable", [])


def test_the_fused_gelu_is_the_tanh_gelu_rounded_once_to_bf16_like_atens():
    x = _inputs()
    ours, aten, exact = tanh_gelu(x), F.gelu(x, approximate="tanh"), _exact_gelu(x)
    assert ours.dtype == torch.bfloat16 and ours.shape == x.shape
    scale = exact.abs().clamp_min(1e-3)
    assert ((ours.double() - exact).abs() <= scale * BF16_STEP / 2 + 1e-6).all()
    # Against ATen's own bf16 GELU: equal, or one bf16 step apart where the two roundings fall either side.
    assert ((ours.double() - aten.double()).abs() <= scale * BF16_STEP + 1e-6).all()
    assert (ours == aten).float().mean() > 0.9  # 93% of these


def test_the_fused_gelu_gradient_is_the_tanh_gelus():
    x = _inputs().requires_grad_()
    grad_out = torch.randn(x.shape).to(torch.bfloat16)
    (grad,) = torch.autograd.grad(tanh_gelu(x), x, grad_out)
    exact_x = x.detach().double().requires_grad_()
    (exact,) = torch.autograd.grad(_exact_gelu(exact_x), exact_x, grad_out.double())
    assert grad.dtype == torch.bfloat16
    # One rounding of the product to bf16 (the derivative itself is computed in fp32).
    assert ((grad.double() - exact).abs() <= exact.abs() * BF16_STEP / 2 + 1e-4).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_other_dtypes_get_atens_gelu_bit_for_bit(dtype):
    x = torch.randn(300, dtype=dtype)
    assert not cpu_kernels.applies(x)
    assert torch.equal(tanh_gelu(x), F.gelu(x, approximate="tanh"))


def test_without_a_compiler_it_warns_once_and_is_atens_gelu(monkeypatch, fresh_kernels):
    def no_compiler(fn, **kwargs):
        def fails(*args):
            raise RuntimeError("no C++ compiler found (g++)\nmore detail")

        return fails

    monkeypatch.setattr(torch, "compile", no_compiler)
    x = _inputs(64).requires_grad_()
    with pytest.warns(RuntimeWarning, match=r"could not build its CPU training kernels \(RuntimeError: no C\+\+"):
        y = tanh_gelu(x)
    assert torch.equal(y, F.gelu(x, approximate="tanh"))
    with warnings.catch_warnings():  # the second call and the gradient fall back silently
        warnings.simplefilter("error")
        (grad,) = torch.autograd.grad(tanh_gelu(x).sum(), x)
    expected = torch.ops.aten.gelu_backward(torch.ones_like(x), x.detach(), approximate="tanh")
    assert torch.equal(grad, expected)


def test_the_fused_gelu_module_takes_the_compiled_kernels_only_when_training():
    x = _inputs(64).requires_grad_()
    assert "TanhGELU" not in type(GELU()(x).grad_fn).__name__  # the model's own GELU: ATen's
    fused = FusedGELU()
    assert type(fused(x).grad_fn).__name__ == "_TanhGELUBackward"
    fused.eval()
    assert torch.equal(fused(x), F.gelu(x, approximate="tanh"))


@pytest.mark.parametrize("fused", [True, False])
def test_training_swaps_in_the_fused_gelu_from_its_setting(fused):
    config = TrainConfig.from_flat(dict(emb_dim=32, n_layers=2, n_heads=2, context_length=16, fused_gelu=fused))
    model = build_model(config)
    gelus = [m for m in model.modules() if isinstance(m, (GELU, FusedGELU))]
    assert len(gelus) == 2 and all(isinstance(g, FusedGELU) is fused for g in gelus)
    assert "fused" not in str(model.config.to_dict())  # a speed choice of the run, not of the saved model


P_DROPPED = 3277  # of 32768: p = 0.100006, what fast dropout makes of 0.1
KEPT_SCALE = 32768 / (32768 - P_DROPPED)


def test_hashed_dropout_drops_at_its_rate_independently_of_position_and_of_the_previous_mask():
    n = 1 << 20
    x = torch.ones(n)
    first, second = hashed_dropout(x, P_DROPPED, KEPT_SCALE) == 0, hashed_dropout(x, P_DROPPED, KEPT_SCALE) == 0
    p = P_DROPPED / 32768
    tolerance = 5 * (p * (1 - p) / (n / 8)) ** 0.5  # five standard deviations of a rate over n/8 elements
    for lane in range(8):  # every residue of the index: no pattern in the counter's low bits
        assert abs(first[lane::8].float().mean().item() - p) < tolerance
    # Neighbours, and the same element in two draws, are dropped together as often as independence says: p^2.
    assert abs((first[1:] & first[:-1]).float().mean().item() - p * p) < tolerance
    assert abs((first & second).float().mean().item() - p * p) < tolerance


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hashed_dropout_follows_the_seed_scales_once_and_backpropagates_the_same_mask(dtype):
    x = torch.randn(1 << 16).to(dtype).requires_grad_()
    torch.manual_seed(7)
    y = hashed_dropout(x, P_DROPPED, KEPT_SCALE)
    torch.manual_seed(7)
    assert torch.equal(hashed_dropout(x, P_DROPPED, KEPT_SCALE), y)  # torch's seed decides the mask
    assert not torch.equal(hashed_dropout(x, P_DROPPED, KEPT_SCALE), y)  # and each call draws a new one
    kept = y != 0
    # The kept values are x * scale computed in fp32 and rounded once to x's dtype.
    assert torch.equal(y[kept], (x.detach()[kept].float() * KEPT_SCALE).to(dtype))
    grad_out = torch.randn(x.shape).to(dtype)
    (grad,) = torch.autograd.grad(y, x, grad_out)
    assert torch.equal(grad, torch.where(kept, grad_out.float() * KEPT_SCALE, 0.0).to(dtype))


def test_large_fast_dropout_masks_come_from_the_compiled_kernel_and_small_ones_do_not():
    big, small = torch.ones(1 << 18, requires_grad=True), torch.ones(1000, requires_grad=True)
    assert type(apply_dropout(big, 0.1, training=True, fast=True).grad_fn).__name__ == "_HashedDropoutBackward"
    assert type(apply_dropout(small, 0.1, training=True, fast=True).grad_fn).__name__ == "_MaskedDropoutBackward"


def test_without_a_compiler_dropout_falls_back_to_the_mersenne_twister_masks(monkeypatch, fresh_kernels):
    def no_compiler(fn, **kwargs):  # fails in torch.compile itself (the GELU test above: at the first call)
        raise RuntimeError("no g++")

    monkeypatch.setattr(torch, "compile", no_compiler)
    x = torch.ones(1 << 18, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="no g\\+\\+"):
        y = apply_dropout(x, 0.1, training=True, fast=True)  # the kernel ran eagerly: the same maths
    assert y.unique().tolist() == [0.0, pytest.approx(KEPT_SCALE)]
    assert not cpu_kernels.compiled_available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        later = apply_dropout(x, 0.1, training=True, fast=True)
    assert type(later.grad_fn).__name__ == "_MaskedDropoutBackward"


@needs_a_compiler
def test_many_shapes_ranks_and_dtypes_stay_on_the_compiled_kernels():
    # dynamo allows 8 graphs per function and a fullgraph compile fails past them: the kernels must not need many.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # ours; inductor has its own
        for dtype in (torch.float32, torch.bfloat16):
            for shape in ((5000,), (3, 700), (2, 3, 400), (2, 2, 3, 100), (7, 1, 2, 3, 40), (9, 11), (1,) * 5 + (33,)):
                x = torch.randn(shape).to(dtype).requires_grad_()
                y = hashed_dropout(x, P_DROPPED, KEPT_SCALE)
                z = tanh_gelu(y)
                assert z.shape == x.shape
                z.sum().backward()
    assert cpu_kernels.compiled_available()


@needs_a_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_compiled_mask_is_the_eager_one_bit_for_bit(dtype):
    # Its int64 products wrap modulo 2^64 in both: the fallback (and a backward run eagerly) sees the same mask.
    x = torch.randn(100_003).to(dtype)
    seed, dropped, scale = torch.tensor(-(2**62) - 12345), torch.tensor(P_DROPPED), torch.tensor(KEPT_SCALE)
    compiled = cpu_kernels._run(cpu_kernels._masked, None, x, seed, dropped, scale)
    assert cpu_kernels.compiled_available()
    assert torch.equal(compiled, cpu_kernels._masked(x, seed, dropped, scale))
