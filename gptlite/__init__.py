"""gptlite: the GPT of "Build a Large Language Model (From Scratch)" as a Hugging Face model."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_gptlite import GPTLiteConfig
from .modeling_gptlite import GPTLiteForCausalLM, GPTLiteModel, GPTLitePreTrainedModel

# `import gptlite` makes the Auto classes resolve model_type "gptlite" locally, so from_pretrained works
# without trust_remote_code.
AutoConfig.register("gptlite", GPTLiteConfig, exist_ok=True)
AutoModel.register(GPTLiteConfig, GPTLiteModel, exist_ok=True)
AutoModelForCausalLM.register(GPTLiteConfig, GPTLiteForCausalLM, exist_ok=True)
# save_pretrained then copies the model files and writes `auto_map`, so others load with trust_remote_code.
GPTLiteConfig.register_for_auto_class()
GPTLiteModel.register_for_auto_class("AutoModel")
GPTLiteForCausalLM.register_for_auto_class("AutoModelForCausalLM")

# Safetensors-only loading that names a broken weights file (the installed package's, not the remote code's).
from . import safetensors_loading  # noqa: E402, F401

# Importing gptlite.hub also makes `model.push_to_hub` upload gptlite's model card and the tokenizer.
from .hub import model_card, push_to_hub, read_training_metrics, write_model_card  # noqa: E402


def __getattr__(name: str):
    # The tokenizer helpers import tiktoken/tokenizers; load them only when asked for.
    if name in ("get_tokenizer", "get_hf_tokenizer", "save_tokenizer"):
        from . import tokenization

        return getattr(tokenization, name)
    raise AttributeError(f"module 'gptlite' has no attribute {name!r}")


__all__ = [
    "GPTLiteConfig",
    "GPTLiteForCausalLM",
    "GPTLiteModel",
    "GPTLitePreTrainedModel",
    "get_hf_tokenizer",
    "get_tokenizer",
    "model_card",
    "push_to_hub",
    "read_training_metrics",
    "save_tokenizer",
    "write_model_card",
]
