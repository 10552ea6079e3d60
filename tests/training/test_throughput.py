import pytest
import torch

from gptlite.training.throughput import _datasheet_peak, device_peak_flops, model_flops_per_token
from tests.conftest import tiny_model


@pytest.mark.parametrize(
    ("name", "precision", "expected"),
    [
        ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
        ("NVIDIA A10G", "bf16", 70e12),
        ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
        ("NVIDIA H100 PCIe", "fp32", 378e12),
        ("NVIDIA L40S", "bf16", 362e12),
        ("NVIDIA L4", "bf16", 121e12),
        ("Tesla T4", "fp32", 8.1e12),
        ("Some Future GPU", "bf16", None),
    ],
)
def test_gpu_peaks_come_from_the_datasheet_table_longest_name_first(name, precision, expected):
    assert _datasheet_peak(name, precision) == expected


def test_cpu_peak_is_measured_in_the_training_dtype():
    peak, source = device_peak_flops(torch.device("cpu"), "fp32")
    assert peak > 1e8 and source == "measured float32 matmul"


def test_flops_per_token_count_the_head_once_tied_or_not():
    tied, untied = tiny_model(tie_word_embeddings=True), tiny_model(tie_word_embeddings=False)
    c = tied.config
    per_block = 12 * c.emb_dim**2 + 10 * c.emb_dim  # q/k/v (no bias), out_proj, MLP, two LayerNorms
    n = c.n_layers * per_block + 2 * c.emb_dim  # + final LayerNorm
    want = 6 * (n + c.vocab_size * c.emb_dim) + 12 * c.n_layers * c.emb_dim * 40
    assert model_flops_per_token(tied, 40) == model_flops_per_token(untied, 40) == want


def test_measuring_the_peak_leaves_the_global_random_state_alone():
    from gptlite.training.throughput import _measured_peak

    _measured_peak.cache_clear()
    state = torch.get_rng_state()
    device_peak_flops(torch.device("cpu"), "bf16")
    assert torch.equal(torch.get_rng_state(), state)
