"""GPT-2 BPE tokenizers (tiktoken and Hugging Face) built from the BPE files shipped with the package.

Both tokenizers are built from ``gptlite/data/encoder.json`` and ``gptlite/data/vocab.bpe`` (OpenAI's
GPT-2 release files), so nothing is ever downloaded. The files are checked against the SHA-256 hashes
that tiktoken pins for the same files, which makes :func:`get_tokenizer` identical to
``tiktoken.get_encoding("gpt2")``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import tiktoken
from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast

__all__ = [
    "ENCODER_JSON_SHA256",
    "EOT_ID",
    "EOT_TOKEN",
    "N_VOCAB",
    "VOCAB_BPE_SHA256",
    "get_hf_tokenizer",
    "get_tokenizer",
    "save_tokenizer",
]

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
N_VOCAB = 50257

ENCODER_JSON = "encoder.json"
VOCAB_BPE = "vocab.bpe"
# Same pins as tiktoken_ext.openai_public.gpt2(); matching them is what makes our ranks tiktoken's.
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"

# tiktoken's (faster, possessive) equivalent of the split regex of the original GPT-2 release;
# it must be byte-for-byte tiktoken's string for the Encoding to be identical to tiktoken's gpt2.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

_DATA_DIR = Path(__file__).resolve().parent / "data"
_EXPECTED_SHA256 = {ENCODER_JSON: ENCODER_JSON_SHA256, VOCAB_BPE: VOCAB_BPE_SHA256}


def _read_verified(path: Path, expected_sha256: str) -> bytes:
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise ValueError(
            f"GPT-2 BPE file {path} has SHA-256 {actual}, expected {expected_sha256}; "
            "the packaged tokenizer data is corrupted or was modified. Reinstall gptlite."
        )
    return data


# Returns (encoder.json vocab, vocab.bpe merges), both still in GPT-2's byte-to-unicode alphabet.
def _read_bpe_files(data_dir: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    data_dir = Path(data_dir)
    encoder = json.loads(_read_verified(data_dir / ENCODER_JSON, _EXPECTED_SHA256[ENCODER_JSON]))
    bpe_text = _read_verified(data_dir / VOCAB_BPE, _EXPECTED_SHA256[VOCAB_BPE]).decode("utf-8")
    # The first line is the "#version: 0.2" header and the file ends with a newline.
    merges = []
    for line in bpe_text.split("\n")[1:]:
        if line:
            first, second = line.split()
            merges.append((first, second))
    return encoder, merges


def _gpt2_unicode_to_byte() -> dict[str, int]:
    # GPT-2 stores every byte as a printable character: printable Latin-1 bytes stand for themselves,
    # the remaining 68 (controls, space, NBSP, soft hyphen, ...) are shifted to chr(256 + n) in byte order.
    printable = [*range(0x21, 0x7E + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    mapping = {chr(b): b for b in printable}
    shifted = [b for b in range(256) if b not in mapping.values()]
    mapping.update({chr(256 + n): b for n, b in enumerate(shifted)})
    return mapping


def _data_gym_to_mergeable_ranks(encoder: dict[str, int], merges: list[tuple[str, str]]) -> dict[bytes, int]:
    unicode_to_byte = _gpt2_unicode_to_byte()

    def to_bytes(token: str) -> bytes:
        return bytes(unicode_to_byte[ch] for ch in token)

    # Single bytes come first, in the order of the GPT-2 alphabet (printable bytes first), which is
    # exactly the order of ids 0..255 in encoder.json.
    ranks = {bytes([b]): rank for rank, b in enumerate(unicode_to_byte.values())}
    # Each merge creates the next token, so a token's rank is its merge priority: tiktoken relies on that.
    rank = len(ranks)
    for first, second in merges:
        ranks[to_bytes(first) + to_bytes(second)] = rank
        rank += 1

    # Cross-check against encoder.json so a merges/vocab mismatch fails loudly instead of mis-tokenizing.
    expected = {to_bytes(token): i for token, i in encoder.items() if token != EOT_TOKEN}
    if ranks != expected:
        raise ValueError(f"{VOCAB_BPE} and {ENCODER_JSON} disagree: merge ranks do not match the vocabulary")
    return ranks


def _build_encoding(data_dir: Path) -> tiktoken.Encoding:
    encoder, merges = _read_bpe_files(data_dir)
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=_data_gym_to_mergeable_ranks(encoder, merges),
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=N_VOCAB,
    )


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """Return the GPT-2 tiktoken ``Encoding``, built offline from the packaged BPE files.

    The result is identical to ``tiktoken.get_encoding("gpt2")`` (same name, split regex, mergeable
    ranks and ``<|endoftext|>`` = 50256 special token) but needs no network. The BPE files are
    verified against tiktoken's pinned SHA-256 hashes on first call; the Encoding is cached.

    Raises:
        ValueError: if a packaged BPE file does not match its pinned hash (the message names the file).
    """
    return _build_encoding(_DATA_DIR)


def _build_hf_tokenizer(
    data_dir: Path, padding_side: str = "left", model_max_length: int | None = None
) -> PreTrainedTokenizerFast:
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    encoder, merges = _read_bpe_files(data_dir)
    kwargs: dict[str, int] = {}
    if model_max_length is not None:
        kwargs["model_max_length"] = model_max_length
    return GPT2TokenizerFast(
        vocab=encoder,
        merges=merges,
        unk_token=EOT_TOKEN,
        bos_token=EOT_TOKEN,
        eos_token=EOT_TOKEN,
        # GPT-2 has no pad token; reusing <|endoftext|> lets batches be padded, and the attention mask
        # (not the id) is what tells the model to ignore those positions.
        pad_token=EOT_TOKEN,
        add_prefix_space=False,
        # Cleanup rewrites " ." as "." etc., which would break exact decode round trips with tiktoken.
        clean_up_tokenization_spaces=False,
        padding_side=padding_side,
        **kwargs,
    )


def get_hf_tokenizer(
    padding_side: str = "left", model_max_length: int | None = None
) -> PreTrainedTokenizerFast:
    """Return a Hugging Face fast GPT-2 tokenizer built offline from the packaged BPE files.

    It produces the same ids as :func:`get_tokenizer` (``<|endoftext|>`` is a special token, id 50256).
    bos, eos, unk and pad tokens are all ``<|endoftext|>`` so batched, padded inputs work. A new
    instance is returned on each call, so changing its settings does not affect other callers.

    Args:
        padding_side: ``"left"`` (the default: a batch of prompts of different lengths generates as each one
            alone, and the classifiers read each row's last real token) or ``"right"``.
        model_max_length: maximum sequence length recorded in the tokenizer; ``None`` keeps the
            transformers default (effectively unlimited).

    Raises:
        ValueError: on an invalid ``padding_side`` or if a packaged BPE file does not match its pinned hash.
    """
    return _build_hf_tokenizer(_DATA_DIR, padding_side=padding_side, model_max_length=model_max_length)


# config.json keys holding the context length: gptlite's own, then GPT-2's (a `to-hf` export).
_CONTEXT_LENGTH_KEYS = ("context_length", "n_positions")


def _saved_model_context_length(folder: Path) -> int | None:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # no model saved here (yet), or not one we can read: keep transformers' default
    if not isinstance(config, dict):
        return None
    for key in _CONTEXT_LENGTH_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def save_tokenizer(save_directory: str | os.PathLike[str], model_max_length: int | None = None) -> None:
    """Write the Hugging Face tokenizer files (``tokenizer.json``, ``tokenizer_config.json``) to a folder.

    The folder can then be loaded offline with ``AutoTokenizer.from_pretrained(save_directory)``,
    e.g. next to a saved model. The directory is created if needed. ``tokenizer_config.json`` names
    ``GPT2TokenizerFast``, so transformers builds GPT-2's own tokenizer class from it, never remote code.

    Args:
        save_directory: target folder.
        model_max_length: maximum sequence length to record; by default the context length of the model
            already saved in the folder (its config.json), as GPT-2's tokenizer records its own.
    """
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    if model_max_length is None:
        model_max_length = _saved_model_context_length(folder)
    get_hf_tokenizer(model_max_length=model_max_length).save_pretrained(str(folder))
    # transformers 5.x writes "GPT2Tokenizer", which on 4.x names the slow class (it needs vocab.json and
    # merges.txt, which are not written): name the fast one, which both read from tokenizer.json.
    config_path = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
    tokenizer_config["tokenizer_class"] = "GPT2TokenizerFast"
    config_path.write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
