"""A saved gptlite folder exports to ONNX with torch's two exporters, and onnxruntime computes the same logits.

The folder is loaded as users load it (AutoModelForCausalLM with trust_remote_code) and exported with dynamic
batch and sequence axes; onnxruntime then runs other shapes than the traced one, with left padding. Logits are
compared where the mask is 1 (a padding position's logits are whatever each runtime makes of a fully masked row).
"""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from gptlite import GPTLiteConfig, GPTLiteForCausalLM

ort = pytest.importorskip("onnxruntime")  # a test dependency (pyproject's [test]); absent only in a bare install


class LogitsOf(torch.nn.Module):
    """The causal LM as an exporter sees it: ids and mask in, logits out, no cache."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def _padded(batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 50257, (batch, length))
    mask = torch.ones_like(ids)
    mask[0, : length // 2] = 0  # the first row is left-padded
    return ids, mask


# The dynamo exporter traces the model through torch.export: 3.5 s, so it runs with the slow tests.
@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["torchscript", "dynamo"])
def test_the_saved_folder_exports_to_onnx_and_onnxruntime_gives_the_same_logits(tmp_path, dynamo):
    torch.manual_seed(0)
    config = GPTLiteConfig(emb_dim=32, n_layers=2, n_heads=2, context_length=32, drop_rate=0.0)
    GPTLiteForCausalLM(config).save_pretrained(tmp_path / "model")
    model = LogitsOf(AutoModelForCausalLM.from_pretrained(tmp_path / "model", trust_remote_code=True).eval())
    names = {"input_names": ["input_ids", "attention_mask"], "output_names": ["logits"]}
    if dynamo:
        axes = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence", max=config.context_length)}
        shapes = {"dynamic_shapes": (axes, axes)}
    else:
        axes = {0: "batch", 1: "sequence"}
        shapes = {"dynamic_axes": {"input_ids": axes, "attention_mask": axes, "logits": axes}}
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, _padded(2, 7), str(path), dynamo=dynamo, **names, **shapes)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, length in ((2, 7), (3, 12)):
        ids, mask = _padded(batch, length)
        with torch.no_grad():
            want = model(ids, mask).numpy()
        (got,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        real = mask.numpy().astype(bool)
        assert got.shape == want.shape
        assert np.abs(got[real] - want[real]).max() < 1e-4
