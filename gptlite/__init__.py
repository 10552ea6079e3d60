"""gptlite: the GPT of "Build a Large Language Model (From Scratch)" as a Hugging Face model."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_gptlite import GPTLiteConfig
from .modeling_gptlite import (
    GPTLiteForCausalLM,
    GPTLiteForSequenceClassification,
    GPTLiteForTokenClassification,
    GPTLiteModel,
    GPTLitePreTrainedModel,
)

_AUTO_CLASSES = {
    AutoModel: GPTLiteModel,
    AutoModelForCausalLM: GPTLiteForCausalLM,
    AutoModelForSequenceClassification: GPTLiteForSequenceClassification,
    AutoModelForTokenClassification: GPTLiteForTokenClassification,
}
# `import gptlite` makes the Auto classes resolve model_type "gptlite" locally, so from_pretrained works
# without trust_remote_code; save_pretrained then copies the model's code and writes `auto_map`, so that
# others load the folder with trust_remote_code.
AutoConfig.register("gptlite", GPTLiteConfig, exist_ok=True)
GPTLiteConfig.register_for_auto_class()
for _auto, _model in _AUTO_CLASSES.items():
    _auto.register(GPTLiteConfig, _model, exist_ok=True)
    _model.register_for_auto_class(_auto.__name__)

from .hub import model_card, push_to_hub, read_training_metrics, write_model_card  # noqa: E402
from .tokenization import get_hf_tokenizer, get_tokenizer, save_tokenizer  # noqa: E402

__all__ = [
    "GPTLiteConfig",
    "GPTLiteForCausalLM",
    "GPTLiteForSequenceClassification",
    "GPTLiteForTokenClassification",
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
