"""--verify's per-dtype tolerances: every fixture converts within them in every dtype, and a wrong tensor fails
them in every dtype (so the tolerances are neither too tight nor too loose for what they are meant to catch)."""

from __future__ import annotations

import pytest
import torch

from gptlite import GPTLiteConfig, GPTLiteForCausalLM
from gptlite.conversion import common, from_book, from_hf, from_openai, to_hf
from gptlite.conversion.verify import RELATIVE_TOLERANCE, VerificationFailed
from tests.conversion.conftest import OPENAI_TINY, tiny_gpt2

DTYPES = ["float32", "float16", "bfloat16"]
BOOK_CONFIG = {"vocab_size": 50, "context_length": 8, "emb_dim": 16, "n_heads": 2, "n_layers": 1}


@pytest.fixture
def convert(tmp_path):
    """name -> a function converting that fixture to tmp_path/out with `dtype` and verify=True."""
    tiny_gpt2(tied=False).save_pretrained(tmp_path / "hf")
    tiny_gpt2(vocab=500, embd=128, heads=4, layers=4, positions=64).save_pretrained(tmp_path / "hf-4-layers")
    from_hf(tmp_path / "hf", tmp_path / "lite")
    torch.save(GPTLiteForCausalLM(GPTLiteConfig(**BOOK_CONFIG)).state_dict(), tmp_path / "model.pth")
    out = tmp_path / "out"
    return {
        "from-hf": lambda dtype: from_hf(tmp_path / "hf", out, dtype=dtype, verify=True, overwrite=True),
        "from-hf 4 layers": lambda dtype: from_hf(tmp_path / "hf-4-layers", out, dtype=dtype, verify=True,
                                                  overwrite=True),
        "from-openai": lambda dtype: from_openai(OPENAI_TINY, out, dtype=dtype, verify=True, overwrite=True),
        "from-book": lambda dtype: from_book(tmp_path / "model.pth", out, config=BOOK_CONFIG, dtype=dtype,
                                             verify=True, overwrite=True),
        "to-hf": lambda dtype: to_hf(tmp_path / "lite", out, dtype=dtype, verify=True, overwrite=True),
    }


@pytest.mark.parametrize("dtype", DTYPES)
def test_real_conversions_pass_with_a_margin(convert, dtype):
    for name, run in convert.items():
        result = run(dtype)
        assert str(result.dtype) == f"torch.{dtype}"
        # At least 4x below the tolerance: the tolerance is not tuned to just pass these.
        assert result.max_logit_diff <= result.tolerance / 4, (name, result.max_logit_diff, result.tolerance)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_transposed_tensor_fails_in_every_dtype(convert, dtype, monkeypatch, tmp_path):
    original = common.write_safetensors

    def transposed(path, specs, tensors, metadata=None):
        victim = "model.trf_blocks.1.att.out_proj.weight"
        return original(path, specs, ((n, t.T.contiguous() if n == victim else t) for n, t in tensors), metadata)

    monkeypatch.setattr(common, "write_safetensors", transposed)
    with pytest.raises(VerificationFailed, match=rf"out: --verify: .* above the {dtype} tolerance .*not written"):
        convert["from-hf"](dtype)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_tolerances_grow_as_the_dtype_gets_coarser():
    assert RELATIVE_TOLERANCE[torch.float32] < RELATIVE_TOLERANCE[torch.float16] < RELATIVE_TOLERANCE[torch.bfloat16]
