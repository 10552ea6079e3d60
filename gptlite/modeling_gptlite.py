"""The GPT of "Build a Large Language Model (From Scratch)" as a Hugging Face causal language model.

Module and parameter names are the book's (`tok_emb`, `trf_blocks.{i}.att.W_query`, `ff.layers.0`,
`norm1.scale`, `out_head`, ...), so a state dict of the book's `GPTModel` loads 1:1. The maths is the
book's and GPT-2's: learned positions, pre-LayerNorm blocks, tanh-approximated GELU, eps 1e-5.

This file travels to the Hub as remote code: it imports only torch, transformers and its sibling
configuration module.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import can_return_tuple

from .configuration_gptlite import GPTLiteConfig

# Transformers 5.24 renamed `past_key_values` to `cache` (forward keyword, output field, mask argument) and
# keeps the old name only as a deprecated alias. gptlite supports both: inside, the cache is `past_key_values`.
_CACHE_NAME = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


class LayerNorm(nn.Module):
    """The book's LayerNorm: `scale`/`shift` parameters, biased variance, eps inside the square root."""

    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same maths as the book's mean/var formulation, in one fused kernel.
        return F.layer_norm(x, (x.shape[-1],), self.scale, self.shift, self.eps)


class GELU(nn.Module):
    """GPT-2's tanh approximation of GELU, as the book writes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, config: GPTLiteConfig):
        super().__init__()
        # `layers.0` and `layers.2` are the book's (and GPT-2's c_fc / c_proj) parameter names.
        self.layers = nn.Sequential(
            nn.Linear(config.emb_dim, 4 * config.emb_dim),
            GELU(),
            nn.Linear(4 * config.emb_dim, config.emb_dim),
        )
        self.layers[2].is_residual_projection = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _keep_mask(shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1 where an element is kept, 0 where dropped (with probability p rounded to a multiple of 2^-15), in `dtype`.

    torch's CPU dropout draws a Bernoulli variate per element, about 7 ns each on two cores: a fifth of a 124M
    training step. Here one 64-bit draw serves four elements, 15 random bits each, compared as integers.
    """
    dropped = round(p * 32768)  # of 32768 equally likely values, this many drop the element
    n = math.prod(shape)
    # random_() fills int64 with 63 random bits (15% cheaper per bit than int32's 31); each 16-bit quarter
    # keeps 15 of them.
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_()
    uniform15 = bits.view(torch.int16).bitwise_and_(0x7FFF)[:n].view(shape)
    # The comparison writes straight into `dtype`: converting a bool tensor afterwards costs 4x more on CPU.
    return torch.ge(uniform15, dropped, out=torch.empty(shape, dtype=dtype, device=device))


def _keep_scale(p: float) -> float:
    """1 / the keep probability that _keep_mask really uses: kept values are scaled by it to stay unbiased."""
    dropped = round(p * 32768)
    return 32768 / (32768 - dropped)


class _MaskedDropout(torch.autograd.Function):
    """Dropout with _keep_mask's masks (0.1 becomes 0.100006): one multiply each way by the scaled mask."""

    @staticmethod
    def forward(ctx, x, p):
        mask = _keep_mask(x.shape, p, x.dtype, x.device).mul_(_keep_scale(p))  # 0 or the scale
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad_output):
        (mask,) = ctx.saved_tensors
        return grad_output * mask, None


def apply_dropout(x: torch.Tensor, p: float, training: bool, fast: bool = False) -> torch.Tensor:
    """`F.dropout`, or with `fast` on CPU the same in distribution with 4x cheaper masks (see _keep_mask)."""
    if not training or p == 0.0:
        return x
    if fast and x.device.type == "cpu" and 0.0 < p < 1.0:
        return _MaskedDropout.apply(x, p)
    return F.dropout(x, p=p, training=True)


class Dropout(nn.Dropout):
    """`nn.Dropout` that can draw its masks the fast way on CPU (`config.fast_dropout`)."""

    def __init__(self, p: float, fast: bool = False):
        super().__init__(p)
        self.fast = fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_dropout(x, self.p, self.training, self.fast)


def _additive_mask(attention_mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor | None:
    """The additive mask eager attention needs, from any mask gptlite's forward builds.

    Built for SDPA, the mask is None when plain causality suffices (SDPA's is_causal) or boolean (True =
    attend); eager attention adds a float mask instead.
    """
    q_len, k_len = query.shape[-2], key.shape[-2]
    if attention_mask is None:
        if q_len == 1:
            return None
        # Query i sits at key position i + (k_len - q_len): it sees keys up to there.
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask
    else:
        return attention_mask
    return torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill(
        ~allowed, torch.finfo(query.dtype).min
    )


def _masked_softmax(
    attn_scores: torch.Tensor, attention_mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor
) -> torch.Tensor:
    """Attention weights: the scores (b, h, q, k) plus the additive mask, softmaxed over the keys, in query's dtype."""
    attention_mask = _additive_mask(attention_mask, query, key)
    if attention_mask is not None and attention_mask.dtype == attn_scores.dtype:
        # The scores are a fresh product the backward does not need: adding in place is safe.
        attn_scores = attn_scores.add_(attention_mask)
    elif attention_mask is not None:
        # An fp32 mask (built for eager attention) on bf16 scores: in fp32, since fp32's minimum would
        # round to -inf in bf16 and turn a fully masked (padding) row into NaN.
        attn_scores = attn_scores + attention_mask
    if attn_scores.dtype == torch.bfloat16:
        # Computes in fp32 inside and rounds once: the same numbers as an fp32 softmax cast back, in one pass.
        return torch.softmax(attn_scores, dim=-1)
    return torch.softmax(attn_scores, dim=-1, dtype=torch.float32).to(query.dtype)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's attention: scores, causal mask, softmax, dropout on the weights, weighted values."""
    # query: (b, h, q, d); key/value: (b, h, k, d)
    attn_scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (b, h, q, k)
    attn_weights = _masked_softmax(attn_scores, attention_mask, query, key)
    fast = getattr(getattr(module, "config", None), "fast_dropout", False)
    attn_weights = apply_dropout(attn_weights, dropout, module.training, fast)
    context = torch.matmul(attn_weights, value)  # (b, h, q, d)
    return context.transpose(1, 2).contiguous(), attn_weights  # (b, q, h, d)


def fast_dropout_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    output_attentions: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The book's attention for CPU training with `fast_dropout`: the same maths in fewer passes over the weights.

    The (b, h, q, k) weights are the biggest tensors of a step, so both scalings move to tensors 4x smaller
    (at q = k = 4 * head_dim): 1/sqrt(d) onto the queries (exact for d = 64, a power of two) and dropout's
    1/keep onto the context. The mask is added in place, and dropout multiplies by a 0/1 mask from
    _keep_mask. The weights are returned (dropped and scaled) only for `output_attentions`.
    """
    # query: (b, h, q, d); key/value: (b, h, k, d)
    attn_scores = torch.matmul(query * scaling, key.transpose(2, 3))  # (b, h, q, k)
    attn_weights = _masked_softmax(attn_scores, attention_mask, query, key)
    scale = 1.0
    if module.training and dropout > 0.0:
        attn_weights = attn_weights * _keep_mask(attn_weights.shape, dropout, attn_weights.dtype, attn_weights.device)
        scale = _keep_scale(dropout)
    context = torch.matmul(attn_weights, value)  # (b, h, q, d)
    if scale != 1.0:
        context.mul_(scale)
    returned = (attn_weights * scale if scale != 1.0 else attn_weights) if output_attentions else None
    return context.transpose(1, 2).contiguous(), returned  # (b, q, h, d)


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention with the book's projection names."""

    def __init__(self, config: GPTLiteConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.n_heads
        self.head_dim = config.emb_dim // config.n_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.drop_rate
        self.is_causal = True
        # Construction order matters for the book's initialisation: query, key, value, out_proj.
        self.W_query = nn.Linear(config.emb_dim, config.emb_dim, bias=config.qkv_bias)
        self.W_key = nn.Linear(config.emb_dim, config.emb_dim, bias=config.qkv_bias)
        self.W_value = nn.Linear(config.emb_dim, config.emb_dim, bias=config.qkv_bias)
        self.out_proj = nn.Linear(config.emb_dim, config.emb_dim)
        # Read by _init_weights. (Transformers skips init hooks on modules without direct parameters in
        # custom code, so the flag must sit on the Linear itself.)
        self.out_proj.is_residual_projection = True

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq_len, _ = hidden_states.shape
        heads_shape = (batch, seq_len, self.num_heads, self.head_dim)
        query = self.W_query(hidden_states).view(heads_shape).transpose(1, 2)  # (b, h, s, d)
        key = self.W_key(hidden_states).view(heads_shape).transpose(1, 2)
        value = self.W_value(hidden_states).view(heads_shape).transpose(1, 2)

        if past_key_values is not None:
            # Append this step's keys/values; attention then sees all cached positions.
            key, value = past_key_values.update(key, value, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        if self.training and self.attention_dropout > 0 and self.config.fast_dropout and query.device.type == "cpu":
            # With attention dropout, CPU SDPA falls back to its unfused maths anyway, drawing its mask
            # the slow way; the explicit path is the same work with fast masks.
            attention_interface = fast_dropout_attention_forward
        context, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        context = context.reshape(batch, seq_len, -1)  # (b, s, h·d)
        return self.out_proj(context), attn_weights


class TransformerBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm block: x + drop(att(norm1(x))), then x + drop(ff(norm2(x)))."""

    def __init__(self, config: GPTLiteConfig, layer_idx: int):
        super().__init__()
        self.att = MultiHeadAttention(config, layer_idx)
        self.ff = FeedForward(config)
        self.norm1 = LayerNorm(config.emb_dim, config.layer_norm_eps)
        self.norm2 = LayerNorm(config.emb_dim, config.layer_norm_eps)
        self.drop_shortcut = Dropout(config.drop_rate, config.fast_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_out, attn_weights = self.att(
            self.norm1(hidden_states), attention_mask=attention_mask, past_key_values=past_key_values, **kwargs
        )
        hidden_states = hidden_states + self.drop_shortcut(attn_out)
        hidden_states = hidden_states + self.drop_shortcut(self.ff(self.norm2(hidden_states)))
        return hidden_states, attn_weights


def _safetensors_path_in_traceback(error: BaseException) -> str | None:
    """The `.safetensors` path that the innermost frame of `error`'s traceback was reading, if any.

    Transformers opens the weight files one by one inside `_load_pretrained_model`; the file that failed is a local
    variable there and nowhere in the exception, so read it from the traceback rather than re-opening every shard.
    """
    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, str) and value.endswith(".safetensors"):
                return value
    return None


def _scaled_as(tensor: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor) -> torch.Tensor:
    # One pass either way; never scales the saved tensor in place (backward may run again with retain_graph).
    return tensor * scale if tensor.dtype == dtype else tensor.to(dtype).mul_(scale)


class _LinearCrossEntropy(torch.autograd.Function):
    """Cross-entropy of `hidden @ weight.T` without ever holding the full (tokens, vocab) logits in fp32.

    The vocabulary projection, the softmax and both gradients are computed one chunk of rows at a time
    during the forward pass; backward only scales the stored gradients. In fp32 (and fp16) the softmax runs
    on fp32 logits, as transformers' loss does. In bf16 the softmax reads the bf16 logits and writes bf16
    probabilities, computing in fp32 inside (one pass instead of five over a vocabulary-sized tensor), and
    a token's loss is -log of its probability: within bf16's relative precision of 2^-9, about 0.002 per
    token and unbiased, finer than the rounding of the bf16 logits themselves.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk_rows, compute_dtype, divisor):
        # hidden: (n, e); weight: (v, e); targets: (n,)
        h = hidden.to(compute_dtype)
        w = weight.to(compute_dtype)
        grad_hidden = torch.empty_like(h)
        grad_weight = None
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, h.shape[0], chunk_rows):
            h_chunk, t_chunk = h[start : start + chunk_rows], targets[start : start + chunk_rows]
            rows = torch.arange(len(t_chunk), device=h.device)
            valid = t_chunk != ignore_index
            safe_targets = torch.where(valid, t_chunk, 0)
            logits = h_chunk @ w.T  # (c, v)
            if compute_dtype == torch.bfloat16:
                grad_logits = torch.softmax(logits, dim=-1)  # (c, v) bf16 probabilities
                del logits
                # A probability that underflowed to 0 would give an infinite loss: cap it at -log(fp32 tiny), 87.3.
                target_probs = grad_logits[rows, safe_targets].float().clamp_min(torch.finfo(torch.float32).tiny)
                token_loss = -target_probs.log()
            else:
                logits = logits.float()
                lse = torch.logsumexp(logits, dim=-1)  # (c,)
                token_loss = lse - logits[rows, safe_targets]
                grad_logits = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            loss_sum += (token_loss * valid).sum()
            # d(loss)/d(logits) = softmax - one_hot(target), zero on ignored rows.
            grad_logits[rows, safe_targets] -= 1.0
            ignored = (~valid).nonzero().squeeze(1)
            if len(ignored):  # zero those rows only (a boolean mask would rewrite the whole chunk)
                grad_logits.index_fill_(0, ignored, 0.0)
            grad_logits = grad_logits.to(compute_dtype)
            grad_hidden[start : start + chunk_rows] = grad_logits @ w
            chunk_grad_weight = grad_logits.T @ h_chunk  # (v, e)
            if grad_weight is None:
                grad_weight = chunk_grad_weight
            else:
                # Summed in fp32 across chunks, as autocast accumulates a bf16 product into an fp32 .grad.
                grad_weight = grad_weight.float().add_(chunk_grad_weight)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.hidden_dtype, ctx.weight_dtype, ctx.divisor = hidden.dtype, weight.dtype, divisor
        return loss_sum / divisor

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output / ctx.divisor
        return (
            _scaled_as(grad_hidden, ctx.hidden_dtype, scale),
            _scaled_as(grad_weight, ctx.weight_dtype, scale),
            None,
            None,
            None,
            None,
            None,
        )


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the logits `hidden @ weight.T` against `targets`, computed chunk by chunk.

    Equals `F.cross_entropy(hidden @ weight.T, targets, ignore_index=...)` (sum / `num_items_in_batch`
    when that is given, as transformers' loss does) with a fraction of its memory. Under autocast the
    projection runs in the autocast dtype; the softmax reads it in fp32 precision. `chunk_rows` bounds the
    rows whose logits exist at once (default: about 100M logits' worth).
    """
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1).to(hidden.device)
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = hidden.dtype
    if chunk_rows is None:
        # fp32 logits: 1024 rows of GPT-2's vocabulary are 200 MB; bf16 ones half as big per row.
        budget = (1 << 27) if compute_dtype == torch.bfloat16 else (1 << 26)
        chunk_rows = max(1, budget // weight.shape[0])
    if num_items_in_batch is None:
        divisor = (targets != ignore_index).sum().clamp(min=1)
    else:
        divisor = torch.as_tensor(num_items_in_batch, device=hidden.device)
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(
            hidden, weight, targets, ignore_index, chunk_rows, compute_dtype, divisor.float()
        )


class GPTLitePreTrainedModel(PreTrainedModel):
    config_class = GPTLiteConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TransformerBlock"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True
    # The book registers its causal mask as a persistent buffer; gptlite builds masks on the fly.
    _keys_to_ignore_on_load_unexpected = [r"att\.mask$"]
    # Set by `gptlite.hub` (installed package only; it does not travel as remote code) to add the model card and the
    # tokenizer to the folder that `push_to_hub` uploads: called as a method, hook(self, folder, repo_id). None keeps
    # transformers' behaviour.
    _hub_folder_hook = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, safetensors only, naming the weights file when it is truncated or corrupt.

        gptlite only ever writes safetensors, so it never falls back to pickled `pytorch_model.bin` weights unless
        `use_safetensors=False` is passed explicitly.
        """
        kwargs.setdefault("use_safetensors", True)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except Exception as error:
            # safetensors says what is wrong ("incomplete metadata, file not fully covered") but not which file.
            if type(error).__name__ != "SafetensorError":
                raise
            path = _safetensors_path_in_traceback(error) or pretrained_model_name_or_path
            raise OSError(f"{path} is not a valid safetensors file (truncated or corrupt?): {error}") from error

    def _upload_modified_files(self, working_dir, repo_id, *args, **kwargs):
        # push_to_hub has written the weights and README.md to `working_dir`; let gptlite.hub complete the folder.
        if self._hub_folder_hook is not None:
            self._hub_folder_hook(working_dir, repo_id)
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if self.config.initializer == "book":
            # PyTorch's defaults, as the book's GPTModel has them. A freshly built model keeps the draws
            # made at construction (see GPTLiteForCausalLM.__init__); this only fills tensors that
            # from_pretrained found missing.
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.reset_parameters()
            elif isinstance(module, LayerNorm):
                init.ones_(module.scale)
                init.zeros_(module.shift)
            return

        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_projection", False):
                # GPT-2: projections into the residual stream scaled by 1/sqrt(N), N = 2 branches per block.
                std = std / math.sqrt(2 * self.config.n_layers)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, LayerNorm):
            init.ones_(module.scale)
            init.zeros_(module.shift)


class GPTLiteForCausalLM(GPTLitePreTrainedModel, GenerationMixin):
    """The book's `GPTModel` with Hugging Face's loading, saving, caching, loss and generation."""

    _tied_weights_keys = {"out_head.weight": "tok_emb.weight"}

    def __init__(self, config: GPTLiteConfig):
        super().__init__(config)
        # Construction order is the book's, so that the "book" initializer draws the same numbers.
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.pos_emb = nn.Embedding(config.context_length, config.emb_dim)
        self.drop_emb = Dropout(config.drop_rate, config.fast_dropout)
        self.trf_blocks = nn.ModuleList(TransformerBlock(config, i) for i in range(config.n_layers))
        self.final_norm = LayerNorm(config.emb_dim, config.layer_norm_eps)
        self.out_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        self.gradient_checkpointing = False

        if config.initializer == "book":
            # Keep PyTorch's construction-time draws: mark them initialised so post_init skips them.
            # Tensors on the meta device (from_pretrained) hold nothing yet and stay unmarked.
            for param in self.parameters():
                if not param.is_meta:
                    param._is_hf_initialized = True
        self.post_init()
        if self.generation_config is not None and self.generation_config.pad_token_id is None:
            # GPT-2 has no padding token; generating batches pads with <|endoftext|>.
            self.generation_config.pad_token_id = config.eos_token_id

    def get_input_embeddings(self) -> nn.Embedding:
        return self.tok_emb

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.tok_emb = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.out_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.out_head = new_embeddings

    def _check_inputs(self, input_ids: torch.Tensor | None, seq_len: int, past_len: int) -> None:
        if past_len + seq_len > self.config.context_length:
            raise ValueError(
                f"sequence of {past_len + seq_len} tokens ({past_len} cached + {seq_len} new) exceeds "
                f"the model's context_length of {self.config.context_length}"
            )
        if input_ids is None or input_ids.numel() == 0 or torch.compiler.is_compiling():
            return
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= self.config.vocab_size:
            bad = high if high >= self.config.vocab_size else low
            raise ValueError(
                f"token id {bad} is outside the vocabulary: ids must be in [0, vocab_size={self.config.vocab_size})"
            )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        shift_labels: torch.LongTensor | None = None,
        return_logits: bool = True,
        cache: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits for every position (or the last `logits_to_keep`), and the loss when `labels` are given.

        `labels` are the input ids themselves (shifted inside, -100 ignored), as in transformers;
        `shift_labels` are targets already aligned with the inputs (the book's `target_ids`).
        `return_logits=False` computes the loss chunk by chunk without materialising the vocabulary-sized
        logits (the fast training path) and returns `logits=None`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if cache is not None:  # transformers >= 5.24 passes the cache under this name
            if past_key_values is not None and past_key_values is not cache:
                raise ValueError("pass the key/value cache as either `cache` or `past_key_values`, not both")
            past_key_values = cache
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputed blocks would append to the cache twice
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)

        seq_len = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        self._check_inputs(input_ids, seq_len, past_len)

        if inputs_embeds is None:
            inputs_embeds = self.tok_emb(input_ids)  # (b, s, e)
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + seq_len, device=inputs_embeds.device).unsqueeze(0)
        hidden_states = self.drop_emb(inputs_embeds + self.pos_emb(position_ids))  # (b, s, e)

        # One mask for all blocks: None when SDPA's is_causal suffices, else boolean (SDPA) or additive (eager).
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{_CACHE_NAME: past_key_values},
        )

        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for block in self.trf_blocks:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, attn_weights = block(
                hidden_states,
                attention_mask=mask,
                past_key_values=past_key_values,
                output_attentions=output_attentions,
                **kwargs,
            )
            if output_attentions:
                all_attentions += (attn_weights,)
        hidden_states = self.final_norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        if not return_logits:
            if labels is None and shift_labels is None:
                raise ValueError("return_logits=False needs labels or shift_labels: there would be nothing to return")
            if shift_labels is None:
                shift_labels = F.pad(labels, (0, 1), value=-100)[:, 1:]  # tokens < n predict n
            loss = linear_cross_entropy(
                hidden_states, self.out_head.weight, shift_labels, num_items_in_batch=kwargs.get("num_items_in_batch")
            )
            return CausalLMOutputWithPast(
                loss=loss,
                **{_CACHE_NAME: past_key_values if use_cache else None},
                hidden_states=all_hidden_states,
                attentions=all_attentions,
            )

        # Generation needs only the last position's logits: skip the vocabulary projection elsewhere.
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.out_head(hidden_states[:, keep, :])  # (b, kept, vocab)

        loss = None
        if labels is not None or shift_labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, shift_labels=shift_labels, vocab_size=self.config.vocab_size, **kwargs
            )

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{_CACHE_NAME: past_key_values if use_cache else None},
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )


__all__ = ["GPTLiteForCausalLM", "GPTLitePreTrainedModel"]
