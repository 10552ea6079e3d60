"""The GPT of "Build a Large Language Model (From Scratch)" as a Hugging Face causal language model.

`GPTLiteModel` is the book's `GPTModel` without its output head: token and position embeddings, the transformer
blocks and the final LayerNorm, returning hidden states. `GPTLiteForCausalLM` puts the book's `out_head` on top.
Inside them, module and parameter names are the book's (`tok_emb`, `trf_blocks.{i}.att.W_query`, `ff.layers.0`,
`norm1.scale`, `out_head`, ...). A state dict of the book's `GPTModel` (or of gptlite before the base model
existed) loads 1:1 into `GPTLiteForCausalLM`: its trunk keys are moved under `model.` on load. The maths is the
book's and GPT-2's: learned positions, pre-LayerNorm blocks, tanh-approximated GELU, eps 1e-5.

On the same trunk sit the book's chapter-6 classifier (`GPTLiteForSequenceClassification`: a new head on the last
token's hidden state) and a per-token classifier (`GPTLiteForTokenClassification`).

This file travels to the Hub as remote code with `configuration_gptlite.py` and `compat.py` (what differs between
transformers versions), and imports nothing else but torch and transformers: the model is the book's and nothing
more. gptlite's CPU speed-ups are applied to a loaded model from outside (`gptlite.speedups`) and never travel.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import can_return_tuple

from .compat import (
    ALL_ATTENTION_FUNCTIONS,
    OutputRecorder,
    accepts_past_key_values,
    cache_of,
    capture_outputs,
    causal_mask,
    dynamic_cache,
    init,
    tied_weights,
    with_cache,
)
from .configuration_gptlite import GPTLiteConfig


class LayerNorm(nn.Module):
    """The book's LayerNorm: `scale`/`shift` parameters, biased variance, eps inside the square root."""

    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.normalized_shape = (emb_dim,)  # plain ints: exporters need a constant shape, not x.shape
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same maths as the book's mean/var formulation, in one fused kernel.
        return F.layer_norm(x, self.normalized_shape, self.scale, self.shift, self.eps)


class GELU(nn.Module):
    """GPT-2's tanh approximation of GELU, as the book writes it (in one kernel)."""

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
    # query: (b, h, q, d); key/value: (b, h, k, d); attention_mask: additive, (b, 1, q, k), causality included
    attn_scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (b, h, q, k)
    if attention_mask is not None:
        attn_scores = attn_scores + attention_mask
    attn_weights = torch.softmax(attn_scores, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    context = torch.matmul(attn_weights, value)  # (b, h, q, d)
    return context.transpose(1, 2).contiguous(), attn_weights  # (b, q, h, d)


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
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq_len, _ = hidden_states.shape
        heads_shape = (batch, seq_len, self.num_heads, self.head_dim)
        query = self.W_query(hidden_states).view(heads_shape).transpose(1, 2)  # (b, h, s, d)
        key = self.W_key(hidden_states).view(heads_shape).transpose(1, 2)
        value = self.W_value(hidden_states).view(heads_shape).transpose(1, 2)

        if cache is not None:
            # Append this step's keys/values; attention then sees all cached positions.
            key, value = cache.update(key, value, self.layer_idx)

        # The configured implementation ("sdpa", "eager", flash, flex, or one registered with AttentionInterface).
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
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
        self.drop_shortcut = nn.Dropout(config.drop_rate)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn_out, _ = self.att(self.norm1(hidden_states), attention_mask=attention_mask, cache=cache, **kwargs)
        hidden_states = hidden_states + self.drop_shortcut(attn_out)
        hidden_states = hidden_states + self.drop_shortcut(self.ff(self.norm2(hidden_states)))
        return hidden_states


# The trunk's modules; a state dict that has them at the top level (the book's GPTModel, gptlite before
# GPTLiteModel) is read with `model.` in front.
_TRUNK = ("tok_emb.", "pos_emb.", "drop_emb.", "trf_blocks.", "final_norm.")

# The untied head's name in saved files: `lm_head.weight`, as GPT-style checkpoints name it, so that tools that build
# their own head on the trunk (vLLM's transformers backend) find it. Inside, it is the book's `out_head`; folders
# saved with `out_head.weight` load as well.
HEAD_IN_FILES = "lm_head.weight"

# Every Auto class a saved folder opens with, whichever class saved it (transformers itself writes only the saving
# class's entry): a causal-LM folder also opens as AutoModel and as the trunk of the classifiers.
AUTO_MAP = {
    "AutoConfig": "configuration_gptlite.GPTLiteConfig",
    "AutoModel": "modeling_gptlite.GPTLiteModel",
    "AutoModelForCausalLM": "modeling_gptlite.GPTLiteForCausalLM",
    "AutoModelForSequenceClassification": "modeling_gptlite.GPTLiteForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_gptlite.GPTLiteForTokenClassification",
}


class GPTLitePreTrainedModel(PreTrainedModel):
    config_class = GPTLiteConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TransformerBlock"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # `output_hidden_states` / `output_attentions` are recorded by hooks on these modules (capture_outputs).
    _can_record_outputs = {"hidden_states": TransformerBlock, "attentions": OutputRecorder(MultiHeadAttention, index=1)}
    # The book registers its causal mask as a persistent buffer; gptlite builds masks on the fly.
    _keys_to_ignore_on_load_unexpected = [r"att\.mask$"]

    def _keep_construction_draws(self) -> None:
        if self.config.initializer == "book":
            # Keep PyTorch's construction-time draws: mark them initialised so post_init skips them.
            # Tensors on the meta device (from_pretrained) hold nothing yet and stay unmarked.
            for param in self.parameters():
                if not param.is_meta:
                    param._is_hf_initialized = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if self.config.initializer == "book":
            # PyTorch's defaults, as the book's GPTModel has them. A freshly built model keeps the draws
            # made at construction (see _keep_construction_draws); this only fills tensors that
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

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`; a folder that carries gptlite's code lists every Auto class in it."""
        if self._auto_class is not None:  # the code is copied beside the weights
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **AUTO_MAP}
        return super().save_pretrained(save_directory, *args, **kwargs)


class GPTLiteModel(GPTLitePreTrainedModel):
    """The book's `GPTModel` up to its final LayerNorm: the hidden states that heads (out_head, a classifier) read."""

    def __init__(self, config: GPTLiteConfig):
        super().__init__(config)
        # Construction order is the book's, so that the "book" initializer draws the same numbers.
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.pos_emb = nn.Embedding(config.context_length, config.emb_dim)
        self.drop_emb = nn.Dropout(config.drop_rate)
        self.trf_blocks = nn.ModuleList(TransformerBlock(config, i) for i in range(config.n_layers))
        self.final_norm = LayerNorm(config.emb_dim, config.layer_norm_eps)
        self.gradient_checkpointing = False
        self._keep_construction_draws()
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.tok_emb

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.tok_emb = value

    def _check_inputs(
        self, input_ids: torch.Tensor | None, position_ids: torch.Tensor | None, seq_len: int, past_len
    ) -> None:
        # Reading a tensor is free on CPU only: on an accelerator it would wait for the device at every step, and
        # under torch.compile or an exporter's trace it would break the graph. (There, the embedding lookups
        # themselves reject a bad id or position.)
        def readable(tensor) -> bool:
            return (
                isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu" and tensor.numel() > 0
                and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            )

        context = self.config.context_length
        if position_ids is not None:
            if readable(position_ids):
                low, high = (int(bound) for bound in torch.aminmax(position_ids))
                if high >= context:
                    raise ValueError(f"position_ids hold position {high}, which exceeds the model's context_length "
                                     f"of {context} (positions run from 0 to {context - 1})")
                if low < 0:
                    raise ValueError(f"position_ids hold position {low}: positions must be >= 0")
        else:
            past_len = int(past_len) if readable(past_len) else past_len  # a static cache's length is a tensor
            if isinstance(past_len, int) and past_len + seq_len > context:
                raise ValueError(f"sequence of {past_len + seq_len} tokens ({past_len} cached + {seq_len} new) "
                                 f"exceeds the model's context_length of {context}")
        if readable(input_ids):
            low, high = (int(bound) for bound in torch.aminmax(input_ids))
            if low < 0 or high >= self.config.vocab_size:
                raise ValueError(f"token id {high if high >= self.config.vocab_size else low} is outside the "
                                 f"vocabulary: ids must be in [0, vocab_size={self.config.vocab_size})")

    @capture_outputs
    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """The final-normed hidden states (b, s, emb_dim); `output_hidden_states`/`output_attentions` add the rest."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputed blocks would append to the cache twice
        if use_cache and cache is None:
            cache = dynamic_cache(self.config)

        seq_len = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        past_len = cache.get_seq_length() if cache is not None else 0
        self._check_inputs(input_ids, position_ids, seq_len, past_len)

        if inputs_embeds is None:
            inputs_embeds = self.tok_emb(input_ids)  # (b, s, e)
        given_positions = position_ids
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            # Positions count each row's real tokens: a left-padded row gets the positions it has alone.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq_len:]  # (b, s)
        elif position_ids is None:
            position_ids = (torch.arange(seq_len, device=inputs_embeds.device) + past_len).unsqueeze(0)  # (1, s)
        hidden_states = self.drop_emb(inputs_embeds + self.pos_emb(position_ids))  # (b, s, e)

        # One mask for all blocks: None when SDPA's is_causal suffices, else boolean (SDPA) or additive (eager).
        # Positions the caller gave can also keep packed sequences apart (padding-free batches); positions made
        # here are one run per row, and leaving them out spares exporters transformers' search for packing.
        mask = causal_mask(self.config, hidden_states, attention_mask, cache, given_positions)
        for block in self.trf_blocks:
            hidden_states = block(hidden_states, mask, cache, position_ids=position_ids, **kwargs)
        hidden_states = self.final_norm(hidden_states)
        return with_cache(BaseModelOutputWithPast, cache if use_cache else None, last_hidden_state=hidden_states)


class GPTLiteForCausalLM(GPTLitePreTrainedModel, GenerationMixin):
    """The book's `GPTModel`, as `GPTLiteModel` plus `out_head`, with Hugging Face's loss and generation."""

    _tied_weights_keys = tied_weights("out_head.weight", "model.tok_emb.weight")

    def __init__(self, config: GPTLiteConfig):
        super().__init__(config)
        self.model = GPTLiteModel(config)
        self.out_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        self._keep_construction_draws()
        self.post_init()
        if self.generation_config is not None and self.generation_config.pad_token_id is None:
            # GPT-2 has no padding token; generating batches pads with <|endoftext|>.
            self.generation_config.pad_token_id = config.eos_token_id
        self._register_load_state_dict_pre_hook(_trunk_keys_under_model, with_module=True)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`; the head saved as `lm_head.weight` loads into `out_head`."""
        kwargs.setdefault("key_mapping", {rf"^{re.escape(HEAD_IN_FILES)}$": "out_head.weight"})
        return super().from_pretrained(*args, **kwargs)

    def save_pretrained(self, save_directory, *args, state_dict: dict | None = None, **kwargs):
        """`PreTrainedModel.save_pretrained`, with an untied head saved as `lm_head.weight`."""
        if not self.config.tie_word_embeddings:
            state_dict = dict(self.state_dict() if state_dict is None else state_dict)
            if "out_head.weight" in state_dict:
                state_dict[HEAD_IN_FILES] = state_dict.pop("out_head.weight")
        return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.tok_emb

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.tok_emb = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.out_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.out_head = new_embeddings

    @can_return_tuple
    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        shift_labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits for every position (or the last `logits_to_keep`), and the loss when `labels` are given.

        `labels` are the input ids themselves (shifted inside, -100 ignored), as in transformers;
        `shift_labels` are targets already aligned with the inputs (the book's `target_ids`).
        """
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state  # (b, s, e)
        # Generation needs only the last position's logits: skip the vocabulary projection elsewhere.
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.out_head(hidden_states[:, keep, :])  # (b, kept, vocab)

        loss = None
        if labels is not None or shift_labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, shift_labels=shift_labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return with_cache(
            CausalLMOutputWithPast, cache_of(outputs), loss=loss, logits=logits,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )


def _last_token_positions(
    config: GPTLiteConfig, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, batch: int, seq_len: int
) -> torch.Tensor:
    """(b,) index of each row's last real token: the last attended position, else the last that is not padding
    (GPT-2's rule, either padding side), else the last position (the book's chapter 6, which does not pad)."""
    positions = torch.arange(seq_len, dtype=torch.int64)
    if attention_mask is not None and attention_mask.dim() == 2:
        real = attention_mask != 0
    elif config.pad_token_id is not None and input_ids is not None:
        real = input_ids != config.pad_token_id
    else:
        return torch.full((batch,), seq_len - 1, dtype=torch.int64)
    return (positions.to(real.device) * real).argmax(-1)  # (b,)


class GPTLiteForSequenceClassification(GPTLitePreTrainedModel):
    """The book's chapter-6 classifier: the trunk, and a new head (`score`) on the last real token's hidden state.

    Loaded from any gptlite causal-LM folder, the trunk takes its weights and the head is initialised;
    `config.num_labels` sets the classes (2: the book's spam classifier).
    """

    # A causal-LM folder's head is not this model's.
    _keys_to_ignore_on_load_unexpected = [r"att\.mask$", r"^out_head\.", r"^lm_head\."]

    def __init__(self, config: GPTLiteConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = GPTLiteModel(config)
        self.score = nn.Linear(config.emb_dim, config.num_labels)  # the book's new out_head, bias included
        self._keep_construction_draws()
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.tok_emb

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.tok_emb = value

    @can_return_tuple
    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        """Class logits (b, num_labels) from each row's last real token; the loss when `labels` are given."""
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state  # (b, s, e)
        batch, seq_len = hidden_states.shape[:2]
        last = _last_token_positions(self.config, input_ids, attention_mask, batch, seq_len).to(hidden_states.device)
        rows = torch.arange(batch, device=hidden_states.device)
        logits = self.score(hidden_states[rows, last])  # (b, num_labels)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=logits, config=self.config)
        return with_cache(
            SequenceClassifierOutputWithPast, cache_of(outputs), loss=loss, logits=logits,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )


class GPTLiteForTokenClassification(GPTLitePreTrainedModel):
    """The trunk with a per-token head (`classifier`), as GPT-2's token classifier: logits (b, s, num_labels)."""

    _keys_to_ignore_on_load_unexpected = [r"att\.mask$", r"^out_head\.", r"^lm_head\."]

    def __init__(self, config: GPTLiteConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = GPTLiteModel(config)
        self.dropout = nn.Dropout(config.drop_rate)
        self.classifier = nn.Linear(config.emb_dim, config.num_labels)
        self._keep_construction_draws()
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.tok_emb

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.tok_emb = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> TokenClassifierOutput:
        """Logits for every token (b, s, num_labels); the loss when `labels` (-100 ignored) are given."""
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))  # (b, s, num_labels)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config)
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


def _trunk_keys_under_model(module, state_dict, prefix, *args) -> None:
    """load_state_dict hook: a book `GPTModel` state dict (trunk at the top level) loads into this layout, strictly."""
    for key in list(state_dict):
        name = key[len(prefix) :]
        if not key.startswith(prefix) or not name.startswith(_TRUNK):
            continue
        tensor = state_dict.pop(key)
        if not name.endswith(".att.mask"):  # the book's causal-mask buffer; gptlite builds masks on the fly
            state_dict[f"{prefix}model.{name}"] = tensor


__all__ = [
    "AUTO_MAP",
    "HEAD_IN_FILES",
    "GPTLiteForCausalLM",
    "GPTLiteForSequenceClassification",
    "GPTLiteForTokenClassification",
    "GPTLiteModel",
    "GPTLitePreTrainedModel",
]
