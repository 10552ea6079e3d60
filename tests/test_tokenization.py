"""Tests for gptlite.tokenization: tiktoken identity, tiktoken/HF agreement, save/load, tamper detection.

Everything runs offline: tiktoken's own gpt2 definition is fed the packaged files through a patched
file reader, and the Hugging Face tokenizer is loaded back with ``local_files_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load
import tiktoken_ext.openai_public
import transformers
from transformers import AutoTokenizer

from gptlite import tokenization
from gptlite.tokenization import (
    EOT_ID,
    EOT_TOKEN,
    get_hf_tokenizer,
    get_tokenizer,
    save_tokenizer,
)
from tests.conftest import HIDE_GPTLITE, REPO_ROOT, SHARED_DATA, run_child

PACKAGE_DATA = REPO_ROOT / "gptlite" / "data"
THE_VERDICT = SHARED_DATA / "the-verdict.txt"
THE_VERDICT_N_TOKENS = 5145

# Text without special tokens, chosen to stress the split regex and byte-level BPE.
PLAIN_TEXTS = [
    "Hello, world!",
    " leading space",
    "trailing space ",
    "",
    " ",
    "a",
    "Café naïve façade résumé Ångström Straße",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "שלום עולם مرحبا بالعالم",  # RTL (Hebrew, Arabic)
    "emoji 😀🎉👍🏽 and ZWJ 👨‍👩‍👧‍👦 🏳️‍🌈 🧑🏿‍💻",
    "spaces    runs\t\ttabs\nnewline\n\n\nblank lines\r\nCRLF   \n  \t ",
    "\u00a0non-breaking\u2009thin\u3000ideographic space",
    "def f(x):\n    return {'a': [x ** 2, x // 3]}  # comment\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "3.14159 1,000,000 2024-06-01 0x1F 1e-9 +42 -7 ½ ٣",
    "I'm you're we've they'll she'd it's CAN'T I'M Don't",
    "''' \"\"\" `` ~~ ** __init__ <|not_special|> <| endoftext |>",
    "\x00\x01 control \x7f chars \ufeff BOM",
    "Zalgo: Z\u0351\u036b\u0343a\u0310\u0357l\u0367\u0346g\u035bo",
]

# Text with <|endoftext|>, which both tokenizers must map to EOT_ID (tiktoken when allowed).
SPECIAL_TEXTS = [
    EOT_TOKEN,
    f"first document{EOT_TOKEN}second document",
    f"end. {EOT_TOKEN} start",
    f"{EOT_TOKEN}{EOT_TOKEN}\n{EOT_TOKEN} x",
    f"Ünïcödé 😀{EOT_TOKEN}日本",
]


@pytest.fixture(scope="module")
def enc() -> tiktoken.Encoding:
    return get_tokenizer()


@pytest.fixture(scope="module")
def hf():
    return get_hf_tokenizer()


# Builds tiktoken's own gpt2 definition offline, serving the packaged files by URL basename.
def _tiktoken_reference(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tiktoken.Encoding:
    served: list[str] = []

    def fake_read_file(blobpath: str) -> bytes:
        name = blobpath.rsplit("/", 1)[-1]
        if name not in ("vocab.bpe", "encoder.json"):
            raise AssertionError(f"unexpected tiktoken download attempted: {blobpath}")
        served.append(name)
        return (PACKAGE_DATA / name).read_bytes()

    # Patch the downloader, not read_file_cached: read_file_cached still runs and checks tiktoken's
    # pinned hashes. A fresh cache dir ensures nothing cached elsewhere bypasses the patched reader.
    monkeypatch.setattr(tiktoken.load, "read_file", fake_read_file)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))
    reference = tiktoken.Encoding(**tiktoken_ext.openai_public.gpt2())
    assert sorted(served) == ["encoder.json", "vocab.bpe"]
    return reference


def test_constants() -> None:
    assert EOT_TOKEN == "<|endoftext|>"
    assert EOT_ID == 50256


def test_package_files_match_tiktoken_pins() -> None:
    def sha256(name: str) -> str:
        return hashlib.sha256((PACKAGE_DATA / name).read_bytes()).hexdigest()

    assert sha256("vocab.bpe") == tokenization.VOCAB_BPE_SHA256
    assert sha256("encoder.json") == tokenization.ENCODER_JSON_SHA256


def test_identical_to_tiktoken_gpt2(
    enc: tiktoken.Encoding, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ref = _tiktoken_reference(monkeypatch, tmp_path)
    assert enc.name == ref.name == "gpt2"
    assert enc._pat_str == ref._pat_str
    assert enc._mergeable_ranks == ref._mergeable_ranks
    assert enc._special_tokens == ref._special_tokens == {EOT_TOKEN: EOT_ID}
    assert enc.n_vocab == ref.n_vocab == 50257
    assert enc.eot_token == ref.eot_token == EOT_ID
    for text in PLAIN_TEXTS:
        assert enc.encode(text) == ref.encode(text), text
    for text in SPECIAL_TEXTS:
        assert enc.encode(text, allowed_special={EOT_TOKEN}) == ref.encode(text, allowed_special={EOT_TOKEN})


def test_get_tokenizer_is_cached() -> None:
    assert get_tokenizer() is get_tokenizer()


def test_known_ids(enc: tiktoken.Encoding, hf) -> None:
    # Reference ids of the GPT-2 tokenizer (also in the transformers GPT2Tokenizer docstring).
    assert enc.encode("Hello world") == hf.encode("Hello world") == [15496, 995]
    assert enc.encode(" Hello world") == hf.encode(" Hello world") == [18435, 995]
    # A special token is text unless explicitly allowed in tiktoken.
    with pytest.raises(ValueError):
        enc.encode(EOT_TOKEN)
    assert EOT_ID not in enc.encode_ordinary(EOT_TOKEN)


@pytest.mark.parametrize("text", PLAIN_TEXTS)
def test_hf_matches_tiktoken_plain(enc: tiktoken.Encoding, hf, text: str) -> None:
    ids = enc.encode(text)
    assert hf.encode(text) == ids
    assert hf(text)["input_ids"] == ids
    assert enc.decode(ids) == text
    assert hf.decode(ids) == text
    assert EOT_ID not in ids


@pytest.mark.parametrize("text", SPECIAL_TEXTS)
def test_hf_matches_tiktoken_special(enc: tiktoken.Encoding, hf, text: str) -> None:
    ids = enc.encode(text, allowed_special={EOT_TOKEN})
    assert ids.count(EOT_ID) == text.count(EOT_TOKEN)
    assert hf.encode(text) == ids
    assert enc.decode(ids) == text
    assert hf.decode(ids) == text
    assert hf.decode(ids, skip_special_tokens=True) == text.replace(EOT_TOKEN, "")


def test_hf_special_tokens(hf) -> None:
    assert len(hf) == 50257
    for name in ("bos", "eos", "unk", "pad"):
        assert getattr(hf, f"{name}_token") == EOT_TOKEN
        assert getattr(hf, f"{name}_token_id") == EOT_ID
    assert hf.convert_ids_to_tokens(EOT_ID) == EOT_TOKEN
    # No BOS/EOS is added implicitly, like tiktoken.
    assert hf("abc", add_special_tokens=True)["input_ids"] == hf("abc", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("side", ["right", "left"])
def test_hf_batched_padding(enc: tiktoken.Encoding, side: str) -> None:
    tok = get_hf_tokenizer(padding_side=side)
    assert tok.padding_side == side
    texts = ["short", "a somewhat longer sentence here"]
    batch = tok(texts, padding=True)
    short, long = (enc.encode(t) for t in texts)
    n_pad = len(long) - len(short)
    assert n_pad > 0
    padded = [EOT_ID] * n_pad
    mask = [1] * len(short)
    if side == "right":
        assert batch["input_ids"][0] == short + padded
        assert batch["attention_mask"][0] == mask + [0] * n_pad
    else:
        assert batch["input_ids"][0] == padded + short
        assert batch["attention_mask"][0] == [0] * n_pad + mask
    assert batch["input_ids"][1] == long
    assert batch["attention_mask"][1] == [1] * len(long)


def test_hf_instances_are_independent() -> None:
    a = get_hf_tokenizer()
    a.padding_side = "right"
    assert get_hf_tokenizer().padding_side == "left"


def test_invalid_padding_side() -> None:
    with pytest.raises(ValueError, match="padding_side"):
        get_hf_tokenizer(padding_side="center")


def test_model_max_length() -> None:
    assert get_hf_tokenizer(model_max_length=1024).model_max_length == 1024
    assert get_hf_tokenizer().model_max_length > 10**9


@pytest.mark.skipif(not THE_VERDICT.is_file(), reason=f"{THE_VERDICT} not available")
def test_the_verdict(enc: tiktoken.Encoding, hf) -> None:
    text = THE_VERDICT.read_text(encoding="utf-8")
    ids = enc.encode(text)
    assert len(ids) == THE_VERDICT_N_TOKENS
    assert hf.encode(text) == ids
    assert enc.decode(ids) == text
    assert hf.decode(ids) == text


def test_save_and_autotokenizer_round_trip(enc: tiktoken.Encoding, tmp_path: Path) -> None:
    out = tmp_path / "model"
    save_tokenizer(out, model_max_length=256)
    assert (out / "tokenizer.json").is_file()
    assert (out / "tokenizer_config.json").is_file()

    loaded = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert loaded.is_fast
    assert loaded.model_max_length == 256
    assert loaded.pad_token == EOT_TOKEN
    assert loaded.pad_token_id == EOT_ID
    assert loaded.eos_token_id == EOT_ID
    assert loaded.bos_token_id == EOT_ID
    assert len(loaded) == 50257
    for text in PLAIN_TEXTS:
        ids = enc.encode(text)
        assert loaded.encode(text) == ids, text
        assert loaded.decode(ids) == text
    for text in SPECIAL_TEXTS:
        assert loaded.encode(text) == enc.encode(text, allowed_special={EOT_TOKEN}), text
    batch = loaded(["x", "x y z"], padding=True)  # the saved tokenizer pads on the left, for generate
    assert batch["input_ids"][0][0] == EOT_ID
    assert batch["attention_mask"][0] == [0, 0, 1]


def test_save_tokenizer_default_length(tmp_path: Path) -> None:
    save_tokenizer(tmp_path / "nested" / "dir")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "nested" / "dir", local_files_only=True)
    assert loaded.encode("Hello world") == [15496, 995]
    assert loaded.model_max_length > 10**9


def test_save_tokenizer_records_the_saved_models_context_length(tmp_path: Path) -> None:
    from gptlite import GPTLiteConfig, GPTLiteForCausalLM

    config = GPTLiteConfig(vocab_size=50257, context_length=48, emb_dim=16, n_heads=2, n_layers=1)
    GPTLiteForCausalLM(config).save_pretrained(tmp_path)
    save_tokenizer(tmp_path)  # as the README's quick start calls it: no model_max_length
    assert AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=True).model_max_length == 48
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "GPT2TokenizerFast"


# A child process without gptlite loads the tokenizer of a saved gptlite folder (see test_remote_code.py).
LOAD_TOKENIZER = """
import json, sys
from transformers import AutoTokenizer, GPT2TokenizerFast
folder, how = sys.argv[1], sys.argv[2]
if how == "auto":
    tokenizer = AutoTokenizer.from_pretrained(folder)
elif how == "auto-trusted":
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
else:
    tokenizer = GPT2TokenizerFast.from_pretrained(folder)
print(json.dumps({"ids": tokenizer(sys.argv[3])["input_ids"], "max": tokenizer.model_max_length}))
"""


def _saved_gptlite_folder(tmp_path: Path) -> Path:
    from gptlite import GPTLiteConfig, GPTLiteForCausalLM

    folder = tmp_path / "my-gpt"
    config = GPTLiteConfig(vocab_size=50257, context_length=40, emb_dim=16, n_heads=2, n_layers=1)
    GPTLiteForCausalLM(config).save_pretrained(folder)
    save_tokenizer(folder)
    return folder


def _load_tokenizer_without_gptlite(tmp_path: Path, how: str, text: str) -> tuple[dict, str]:
    child = run_child(HIDE_GPTLITE + LOAD_TOKENIZER, tmp_path, str(_saved_gptlite_folder(tmp_path)), how, text)
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout.splitlines()[-1]), child.stdout + child.stderr


@pytest.mark.slow  # a fresh Python process: ~4 s of imports
@pytest.mark.parametrize("how", ["auto-trusted", "gpt2-class"])
def test_tokenizer_of_a_saved_folder_loads_quietly_without_gptlite(tmp_path: Path, enc: tiktoken.Encoding,
                                                                   how: str) -> None:
    text = THE_VERDICT.read_text(encoding="utf-8")[:2000] if THE_VERDICT.is_file() else PLAIN_TEXTS[-1]
    loaded, output = _load_tokenizer_without_gptlite(tmp_path, how, text)
    assert "custom code" not in output and "You are using a model of type" not in output, output
    assert loaded["max"] == 40
    assert loaded["ids"] == enc.encode(text)


@pytest.mark.slow  # a fresh Python process: ~4 s of imports
@pytest.mark.xfail(
    int(transformers.__version__.split(".")[0]) >= 5, strict=True,
    reason="transformers 5.x AutoTokenizer reads config.json through AutoConfig before tokenizer_config.json, "
    "so a remote-code config.json (auto_map.AutoConfig) asks its trust_remote_code question first",
)
def test_autotokenizer_without_trust_remote_code_asks_nothing(tmp_path: Path, enc: tiktoken.Encoding) -> None:
    loaded, output = _load_tokenizer_without_gptlite(tmp_path, "auto", "Every effort moves you")
    assert "custom code" not in output and "You are using a model of type" not in output, output
    assert loaded["max"] == 40 and loaded["ids"] == enc.encode("Every effort moves you")


def _copy_data(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(PACKAGE_DATA / name, data_dir / name)
    return data_dir


def test_untampered_copy_builds(tmp_path: Path, enc: tiktoken.Encoding) -> None:
    data_dir = _copy_data(tmp_path)
    copy = tokenization._build_encoding(data_dir)
    assert copy._mergeable_ranks == enc._mergeable_ranks
    assert tokenization._build_hf_tokenizer(data_dir).encode("Hello world") == [15496, 995]


@pytest.mark.parametrize("name", ["vocab.bpe", "encoder.json"])
def test_tampered_file_is_rejected(tmp_path: Path, name: str) -> None:
    data_dir = _copy_data(tmp_path)
    path = data_dir / name
    if name == "encoder.json":
        # A plausible tampering: swap two ids, still valid JSON.
        encoder = json.loads(path.read_text(encoding="utf-8"))
        encoder["hello"], encoder["world"] = encoder["world"], encoder["hello"]
        path.write_text(json.dumps(encoder), encoding="utf-8")
    else:
        # Drop the last merge: still a well-formed merges file.
        lines = path.read_text(encoding="utf-8").split("\n")
        path.write_text("\n".join(lines[:-2] + [""]), encoding="utf-8")

    with pytest.raises(ValueError, match=name) as excinfo:
        tokenization._build_encoding(data_dir)
    assert str(path) in str(excinfo.value)
    with pytest.raises(ValueError, match=name):
        tokenization._build_hf_tokenizer(data_dir)
