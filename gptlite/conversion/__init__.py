"""Checkpoint conversion: GPT-2 (Hugging Face, OpenAI) and the book's `.pth` in, plain GPT-2 out.

    from gptlite.conversion import from_hf, from_openai, from_book, to_hf
    from_hf("gpt2", "out/gpt2-lite", verify=True)

Every direction reads the one name table in `names.py`. Tensors are converted and written one at a time,
so peak memory stays near one tensor plus the interpreter, not a second copy of the model.
`gptlite-convert` (cli.py) exposes the same four functions with the same arguments.
"""

from .book import from_book
from .common import ConversionResult, book_named, check_gptlite_source
from .configs import from_gpt2_config, read_gpt2_config
from .download import DownloadError
from .export import to_hf
from .hf import from_hf, gpt2_state_dict_in_memory
from .openai import from_openai
from .storage import ConversionError, open_weights
from .tf_bundle import TensorBundle, TensorBundleError

__all__ = [
    "ConversionError",
    "ConversionResult",
    "DownloadError",
    "TensorBundle",
    "TensorBundleError",
    "book_named",
    "check_gptlite_source",
    "from_book",
    "from_gpt2_config",
    "from_hf",
    "from_openai",
    "gpt2_state_dict_in_memory",
    "open_weights",
    "read_gpt2_config",
    "to_hf",
]
