"""How the installed gptlite loads models: safetensors only, and a broken weights file is named.

Importing `gptlite` installs this `from_pretrained` on `GPTLitePreTrainedModel` (so on `GPTLiteModel` and
`GPTLiteForCausalLM`, and on AutoModel loads that resolve to them). It stays out of the remote-code files: a model
loaded with `trust_remote_code` (without gptlite) loads exactly as transformers loads any model.
"""

from __future__ import annotations

from transformers import PreTrainedModel

from .modeling_gptlite import GPTLitePreTrainedModel

__all__ = ["from_pretrained"]


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


@classmethod
def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
    """`PreTrainedModel.from_pretrained`, safetensors only, naming the weights file when it is truncated or corrupt.

    gptlite only ever writes safetensors, so it never falls back to pickled `pytorch_model.bin` weights unless
    `use_safetensors=False` is passed explicitly.
    """
    kwargs.setdefault("use_safetensors", True)
    try:
        return PreTrainedModel.from_pretrained.__func__(cls, pretrained_model_name_or_path, *model_args, **kwargs)
    except Exception as error:
        # safetensors says what is wrong ("incomplete metadata, file not fully covered") but not which file.
        if type(error).__name__ != "SafetensorError":
            raise
        path = _safetensors_path_in_traceback(error) or pretrained_model_name_or_path
        raise OSError(f"{path} is not a valid safetensors file (truncated or corrupt?): {error}") from error


GPTLitePreTrainedModel.from_pretrained = from_pretrained
