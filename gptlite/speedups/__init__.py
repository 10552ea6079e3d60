"""gptlite's CPU speed-ups: applied to a loaded model from outside, never part of the model or of a saved folder.

    from gptlite.speedups import speed_up
    speed_up(model, training=True)   # before training: fast dropout masks, compiled GELU, fused loss
    speed_up(model)                  # before decoding or evaluating: bf16 kernels for a few rows, fused loss

Each piece does the book's maths with fewer passes over memory, which is what bounds a step on a CPU; elsewhere
(GPUs, fp32 where nothing pays) each one is the module it replaces. `speed_up` swaps modules in place (sharing
their parameters) and binds a forward to that one causal LM whose loss, when it is given labels, comes from the
hidden states and the head's weight without vocabulary-sized logits (as Liger Kernel does); `logits` is then
None. `save_pretrained` still writes the book's model: the swapped modules hold no state of their own and their
code is not copied.
`gptlite-train`, `gptlite-generate` and `gptlite-eval` call it; what each piece buys is in docs/performance.md.
"""

from __future__ import annotations

from torch import nn

from gptlite.modeling_gptlite import GELU, GPTLiteForCausalLM

from . import attention
from .decoding import DecodingLinear
from .dropout import FastDropout
from .fused_loss import FusedLossForward
from .kernels import FusedGELU


def _swap(model: nn.Module, old_type: type, make) -> None:
    """Replace every module whose type is exactly `old_type` by `make(module)`."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is old_type:
                setattr(parent, name, make(child))


def speed_up(
    model: nn.Module, training: bool = False, fast_dropout: bool = True, fused_gelu: bool = True
) -> nn.Module:
    """Apply gptlite's CPU speed-ups to `model` in place and return it.

    Args:
        model: a gptlite model (any head).
        training: True for training (fast dropout, compiled GELU); False for decoding (bf16 products of a few
            rows through the kernels that stream the weights fastest). Both compute a causal LM's loss fused.
        fast_dropout: in training, dropout masks from 15-bit draws (the rate rounded to a multiple of 2^-15) and,
            where attention is SDPA, the attention that uses them; False keeps torch's draws.
        fused_gelu: in bf16 training, GELU and its gradient as one compiled loop each.
    """
    if isinstance(model, GPTLiteForCausalLM):
        model.forward = FusedLossForward(model)
    if not training:
        _swap(model, nn.Linear, DecodingLinear.sharing)
        return model
    if fast_dropout:
        _swap(model, nn.Dropout, lambda module: FastDropout(module.p).train(module.training))
        if model.config._attn_implementation == "sdpa":
            attention.register()
            model.set_attn_implementation(attention.FAST_DROPOUT_ATTENTION)
    if fused_gelu:
        _swap(model, GELU, lambda module: FusedGELU().train(module.training))
    return model


__all__ = ["speed_up"]
