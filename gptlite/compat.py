"""What differs between the transformers versions that gptlite's remote code runs on (4.54 through 5.x).

This file travels to the Hub with `modeling_gptlite.py` and `configuration_gptlite.py`: whoever downloads a gptlite
model runs it with their own transformers, often a 4.x pinned by a serving or export stack. Everything
version-dependent lives here, so that the model file reads the same on every version. It imports only torch,
transformers and the standard library.
"""

from __future__ import annotations

import functools
import inspect
import re

import torch
import transformers

# The oldest transformers this code runs on, measured by tests/test_transformers_versions.py: 4.53 has no output
# recording hooks (OutputRecorder, check_model_inputs) yet.
MIN_TRANSFORMERS = (4, 54)


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


if _version_tuple(transformers.__version__) < MIN_TRANSFORMERS:
    raise ImportError(
        f"gptlite models need transformers >= {'.'.join(map(str, MIN_TRANSFORMERS))} "
        f"(this is {transformers.__version__}): pip install -U 'transformers>={'.'.join(map(str, MIN_TRANSFORMERS))}'"
    )

# Imported after the version check: on an older transformers some of these modules do not exist.
from transformers.cache_utils import DynamicCache  # noqa: E402
from transformers.masking_utils import create_causal_mask  # noqa: E402
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as _ATTENTION_FUNCTIONS  # noqa: E402

_MASK_PARAMETERS = inspect.signature(create_causal_mask).parameters
# transformers 5.24 renamed the key/value cache from `past_key_values` to `cache` (forward keyword, output field,
# mask argument); older versions only know `past_key_values`.
CACHE_NAME = "cache" if "cache" in _MASK_PARAMETERS else "past_key_values"

_CACHE_TAKES_CONFIG = "config" in inspect.signature(DynamicCache.__init__).parameters

try:  # transformers >= 5.0
    from transformers.utils.output_capturing import OutputRecorder, capture_outputs
except ImportError:  # 4.x: the same hooks under their first name
    from transformers.utils.generic import OutputRecorder
    from transformers.utils.generic import check_model_inputs as capture_outputs

if hasattr(_ATTENTION_FUNCTIONS, "get_interface"):
    ALL_ATTENTION_FUNCTIONS = _ATTENTION_FUNCTIONS
else:  # 4.x: the registry has no get_interface yet

    class _AttentionFunctions:
        def get_interface(self, name: str, default):
            return _ATTENTION_FUNCTIONS.get(name, default) if name != "eager" else default

    ALL_ATTENTION_FUNCTIONS = _AttentionFunctions()

try:  # transformers >= 5.0: initialisers that from_pretrained knows not to re-run on loaded weights
    from transformers import initialization as init
except ImportError:
    from torch.nn import init


def dynamic_cache(config) -> DynamicCache:
    """An empty DynamicCache (given the config from 4.56 on, which sizes its layers from it)."""
    if _CACHE_TAKES_CONFIG:
        return DynamicCache(config=config)
    return DynamicCache()


def causal_mask(config, inputs_embeds, attention_mask, cache, position_ids):
    """`create_causal_mask` as the installed transformers spells it: the mask every block of one forward shares."""
    kwargs = {"config": config, "attention_mask": attention_mask, CACHE_NAME: cache, "position_ids": position_ids}
    if "inputs_embeds" in _MASK_PARAMETERS:
        kwargs["inputs_embeds"] = inputs_embeds
    else:  # before 5.4
        kwargs["input_embeds"] = inputs_embeds
    if "cache_position" in _MASK_PARAMETERS:  # before 5.23: the positions of the new tokens in the cache
        past = cache.get_seq_length() if cache is not None else 0
        kwargs["cache_position"] = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past
    return create_causal_mask(**kwargs)


def accepts_past_key_values(forward):
    """Let `forward(cache=...)` also take the cache as `past_key_values`, as the installed transformers expects.

    From 5.24 `past_key_values` is a deprecated alias, with transformers' own warning (GPT-2's decorator); before,
    it is the only name that `generate` and users pass, so it is renamed silently.
    """
    if CACHE_NAME == "cache":
        from transformers.utils.deprecation import deprecate_kwarg

        return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(forward)

    @functools.wraps(forward)
    def renamed(*args, **kwargs):
        if "past_key_values" in kwargs:
            if kwargs.get("cache") is not None:
                raise ValueError("pass the key/value cache as either `cache` or `past_key_values`, not both")
            kwargs["cache"] = kwargs.pop("past_key_values")
        return forward(*args, **kwargs)

    return renamed


def with_cache(output_class, cache, **fields):
    """An output of `output_class` whose cache field has the installed transformers' name."""
    return output_class(**fields, **{CACHE_NAME: cache})


def cache_of(output):
    """The cache field of a model output, under the installed transformers' name."""
    return getattr(output, CACHE_NAME)


def tied_weights(target: str, source: str):
    """`_tied_weights_keys`: {tied: source} from 5.0 on, the list of tied names before."""
    if _version_tuple(transformers.__version__) >= (5, 0):
        return {target: source}
    return [target]


__all__ = [
    "ALL_ATTENTION_FUNCTIONS",
    "CACHE_NAME",
    "MIN_TRANSFORMERS",
    "OutputRecorder",
    "accepts_past_key_values",
    "cache_of",
    "capture_outputs",
    "causal_mask",
    "dynamic_cache",
    "init",
    "tied_weights",
    "with_cache",
]
