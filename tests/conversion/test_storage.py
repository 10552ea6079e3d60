import torch

from gptlite.conversion.storage import load_torch_file


def _state_dict():
    generator = torch.Generator().manual_seed(0)
    # Sizes that end mid-page, so dropping one tensor's pages also drops part of its neighbour's.
    return {f"t{i}": torch.randn(1000 + 7 * i, 37, generator=generator) for i in range(4)}


def test_a_mapped_checkpoint_hands_out_copies_and_reads_dropped_pages_back_from_the_file(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    expected = _state_dict()
    torch.save(expected, path)
    source = load_torch_file(path)
    assert source._file_mapped
    for _ in range(2):  # the second round reads every page again after the first round dropped them
        for name, tensor in expected.items():
            got = source.get(name)
            assert torch.equal(got, tensor), name
            assert got.untyped_storage().data_ptr() != source._tensors[name].untyped_storage().data_ptr()


def test_a_legacy_checkpoint_is_read_into_memory_and_never_advised(tmp_path):
    path = tmp_path / "legacy.bin"
    expected = _state_dict()
    torch.save(expected, path, _use_new_zipfile_serialization=False)  # torch < 1.6's format: no mmap
    source = load_torch_file(path)
    assert not source._file_mapped
    for _ in range(2):
        for name, tensor in expected.items():
            assert torch.equal(source.get(name), tensor), name
