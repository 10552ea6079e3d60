"""gptlite-convert's output folders: written whole or not at all, never over an input or someone else's files.

Every case runs the real CLI (`main`) on tiny real checkpoints, injects the fault where it happens in
real use (a write, the CRC check, a tensor, Ctrl-C) and checks the exit status, that one line names the
culprit, and that the previous output is byte-identical, still loads and computes the same logits.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptlite import GPTLiteConfig, GPTLiteForCausalLM
from gptlite.conversion import common, from_hf, storage, to_hf
from gptlite.conversion.cli import main
from tests.conversion.conftest import OPENAI_TINY, assert_intact, folder_logits, snapshot, tiny_gpt2, tree_hashes

REPO_ROOT = Path(__file__).resolve().parents[2]
BOOK_CONFIG = {"vocab_size": 50, "context_length": 8, "emb_dim": 16, "n_heads": 2, "n_layers": 1}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """One source per subcommand, and a previous output of each kind (built once, copied per test)."""
    root = tmp_path_factory.mktemp("sources")
    tiny_gpt2(tied=False).save_pretrained(root / "hf")
    torch.save(GPTLiteForCausalLM(GPTLiteConfig(**BOOK_CONFIG)).state_dict(), root / "model.pth")
    from_hf(root / "hf", root / "lite")
    tiny_gpt2(tied=True, vocab=60, embd=16, layers=1).save_pretrained(root / "other-hf")
    from_hf(root / "other-hf", root / "previous-lite")  # a different model: replaced or kept, never mixed
    to_hf(root / "previous-lite", root / "previous-gpt2")
    return {"hf": root / "hf", "pth": root / "model.pth", "lite": root / "lite",
            "previous-lite": root / "previous-lite", "previous-gpt2": root / "previous-gpt2"}


# subcommand -> (its arguments before OUT, the kind of folder it writes)
COMMANDS = {
    "from-hf": (lambda s: ["from-hf", str(s["hf"])], "lite"),
    "from-openai": (lambda s: ["from-openai", str(OPENAI_TINY)], "lite"),
    "from-book": (lambda s: ["from-book", str(s["pth"]), "--config", json.dumps(BOOK_CONFIG)], "lite"),
    "to-hf": (lambda s: ["to-hf", str(s["lite"])], "gpt2"),
}


def previous_output(sources, kind: str, tmp_path: Path) -> tuple[Path, tuple]:
    out = tmp_path / "out"
    shutil.copytree(sources[f"previous-{kind}"], out)
    return out, snapshot(out)


def run(args: list[str], capsys) -> tuple[int, str]:
    status = main(args)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = [line for line in captured.err.splitlines() if line.startswith("gptlite-convert")]
    assert status == 0 or len(lines) == 1, captured.err
    return status, lines[0] if lines else ""


def wrap_written_tensors(monkeypatch, change) -> None:
    """Every converter writes its weights through `write_safetensors`; `change(index, name, tensor)` may
    alter what reaches the file or raise (a fault in the middle of writing the new folder)."""
    original = common.write_safetensors

    def faulty(path, specs, tensors, metadata=None):
        changed = (change(i, name, tensor) for i, (name, tensor) in enumerate(tensors))
        return original(path, specs, changed, metadata)

    monkeypatch.setattr(common, "write_safetensors", faulty)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_failed_write_keeps_the_previous_output(command, sources, tmp_path, monkeypatch, capsys):
    """Disk full injected into the weights file: "No space left on device while writing OUT; OUT is intact"."""
    prefix, kind = COMMANDS[command]
    out, before = previous_output(sources, kind, tmp_path)
    real_open = open

    class FullDisk:
        def __init__(self, *args, **kwargs):
            self.file = real_open(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            self.file.write(bytes(data)[:7])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.file, name)

    monkeypatch.setattr(storage, "open", FullDisk, raising=False)  # the module's `open`, not the builtin
    status, line = run([*prefix(sources), str(out)], capsys)
    assert status == 1
    assert line == f"gptlite-convert {command}: error: No space left on device while writing {out}; {out} is intact"
    assert_intact(out, before)


@pytest.mark.parametrize("command", COMMANDS)
def test_ctrl_c_while_writing_keeps_the_previous_output(command, sources, tmp_path, monkeypatch, capsys):
    prefix, kind = COMMANDS[command]
    out, before = previous_output(sources, kind, tmp_path)

    def interrupt(index, name, tensor):
        if index == 2:
            raise KeyboardInterrupt
        return name, tensor

    wrap_written_tensors(monkeypatch, interrupt)
    status, line = run([*prefix(sources), str(out)], capsys)
    assert status == 130
    assert line == f"gptlite-convert {command}: interrupted; {out} was left as it was"
    assert_intact(out, before)


def test_ctrl_c_after_the_swap_says_the_new_output_is_whole(sources, tmp_path, monkeypatch, capsys):
    """A signal that lands once the new folder is in place must not claim OUT was left as it was."""
    from gptlite.conversion import cli

    out, before = previous_output(sources, "lite", tmp_path)
    finished = cli._run

    def interrupted_while_finishing(args):
        finished(args)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run", interrupted_while_finishing)
    status, line = run(["from-hf", str(sources["hf"]), str(out)], capsys)
    assert status == 130
    assert line == f"gptlite-convert from-hf: interrupted; {out} had already been written whole"
    assert tree_hashes(out) != before[0]  # the new conversion, not the previous output
    assert torch.allclose(folder_logits(out), folder_logits(sources["hf"]), atol=1e-5)  # and it is the source's model
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_failed_verify_exits_1_and_keeps_the_previous_output(command, dtype, sources, tmp_path, monkeypatch,
                                                              capsys):
    """A wrong conversion (one projection transposed on its way to the file) is caught before the swap."""
    prefix, kind = COMMANDS[command]
    out, before = previous_output(sources, kind, tmp_path)
    victim = "model.trf_blocks.0.att.out_proj.weight" if kind == "lite" else "transformer.h.0.attn.c_proj.weight"
    wrap_written_tensors(monkeypatch, lambda i, name, t: (name, t.T.contiguous() if name == victim else t))
    status, line = run([*prefix(sources), str(out), "--verify", "--dtype", dtype], capsys)
    assert status == 1
    assert line.startswith(f"gptlite-convert {command}: error: {out}: --verify: largest logit difference")
    assert f"above the {dtype} tolerance" in line and "was not written" in line
    assert line.endswith(f"({out} was left as it was)")
    assert_intact(out, before)


def test_a_crc_error_keeps_the_previous_output(sources, tmp_path, capsys):
    """The issue's case: `from-openai BAD out/tiny` had rewritten out/tiny/config.json before failing."""
    bad = tmp_path / "bad"
    shutil.copytree(OPENAI_TINY, bad)
    data = bad / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    out, before = previous_output(sources, "lite", tmp_path)
    status, line = run(["from-openai", str(bad), str(out)], capsys)
    assert status == 1
    assert f"{data}: CRC-32C mismatch for tensor 'model/" in line and line.endswith(f"({out} was left as it was)")
    assert_intact(out, before)


@pytest.mark.slow  # a fresh Python process: ~4 s of imports
@pytest.mark.parametrize(("signum", "status", "said"), [
    (signal.SIGINT, 130, "interrupted"),
    # SIGTERM's default would end the process on the spot and leave the hidden temporary folder behind.
    (signal.SIGTERM, 143, "interrupted by SIGTERM"),
])
def test_a_real_signal_while_writing_keeps_the_previous_output(signum, status, said, sources, tmp_path):
    """SIGINT / SIGTERM to a real `gptlite-convert` process while it writes: one line, exit 130 / 143, previous
    output intact, no temporary folder left."""
    out, before = previous_output(sources, "lite", tmp_path)
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # as from a terminal, however pytest was started
        "from gptlite.conversion import common\n"
        "from gptlite.conversion.cli import main\n"
        "original = common.write_safetensors\n"
        "def slow(path, specs, tensors, metadata=None):\n"
        "    def paced():\n"
        "        for i, pair in enumerate(tensors):\n"
        "            if i == 2:\n"
        "                print('writing', flush=True)\n"
        "                time.sleep(60)\n"
        "            yield pair\n"
        "    return original(path, specs, paced(), metadata)\n"
        "common.write_safetensors = slow\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([sys.executable, "-c", script, "from-hf", str(sources["hf"]), str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout.readline() == "writing\n"
        assert any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir())  # mid-write, beside OUT
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == status, stderr
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("gptlite-convert")] == [
        f"gptlite-convert from-hf: {said}; {out} was left as it was"
    ]
    assert_intact(out, before)  # also: no hidden sibling left


def test_a_real_full_disk_keeps_the_previous_output(sources, small_tmpfs, capsys):
    """A 6 MiB tmpfs holds one converted folder (~3.7 MB, mostly tokenizer.json) but not two."""
    out = small_tmpfs / "out"
    assert run(["from-hf", str(sources["hf"]), str(out)], capsys)[0] == 0
    before = snapshot(out)
    for command in (["from-hf", str(sources["hf"])], ["from-openai", str(OPENAI_TINY)]):
        status, line = run([*command, str(out)], capsys)
        assert status == 1
        full = f"No space left on device while writing {out}; {out} is intact"
        assert line == f"gptlite-convert {command[0]}: error: {full}"
        assert_intact(out, before)
    fresh = small_tmpfs / "plain"
    status, line = run(["to-hf", str(out), str(fresh)], capsys)
    assert status == 1 and line.endswith(f"No space left on device while writing {fresh}; nothing was left at {fresh}")
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["out"]


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


# -- refusals: usage errors, exit 2, nothing touched --------------------------------------------------------


def test_output_is_the_input(sources, tmp_path, capsys):
    """The issue's cases: `to-hf models/a models/a` and `from-hf hf/x hf/x --verify` replaced their source."""
    for command, source in [("to-hf", "lite"), ("from-hf", "hf")]:
        folder = tmp_path / source
        shutil.copytree(sources[source], folder)
        hashes = tree_hashes(folder)
        status, line = run([command, str(folder), str(folder), "--verify"], capsys)
        assert status == 2
        assert line == f"gptlite-convert {command}: error: the output folder {folder} is the input {folder}; " \
                       "write to another folder"
        assert tree_hashes(folder) == hashes
    pth = tmp_path / "model.pth"
    shutil.copy(sources["pth"], pth)
    status, line = run(["from-book", str(pth), str(pth), "--config", json.dumps(BOOK_CONFIG)], capsys)
    assert status == 2 and f"the output folder {pth} is the input {pth}" in line


def test_output_containing_the_input(sources, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(sources["lite"], models / "a")
    hashes = tree_hashes(models)
    status, line = run(["to-hf", str(models / "a"), str(models), "--overwrite"], capsys)  # --overwrite or not
    assert status == 2 and f"the output folder {models} contains the input {models / 'a'}" in line
    status, line = run(["from-hf", str(sources["hf"]), str(sources["hf"].parent)], capsys)
    assert status == 2 and "contains the input" in line
    assert tree_hashes(models) == hashes


@pytest.mark.parametrize("command", COMMANDS)
def test_a_foreign_non_empty_folder_is_refused_unless_overwrite(command, sources, tmp_path, capsys):
    prefix, kind = COMMANDS[command]
    other_kind = "gpt2" if kind == "lite" else "lite"
    out, before = previous_output(sources, other_kind, tmp_path)  # a model, but of the other kind
    status, line = run([*prefix(sources), str(out)], capsys)
    assert status == 2
    assert f"the output folder {out} is not empty and does not hold a " in line and "pass --overwrite" in line
    assert_intact(out, before)

    (out / "notes.txt").write_text("mine")
    assert run([*prefix(sources), str(out), "--overwrite"], capsys)[0] == 0
    assert not (out / "notes.txt").exists()  # replaced whole
    expected_type = "gptlite" if kind == "lite" else "gpt2"
    assert json.loads((out / "config.json").read_text())["model_type"] == expected_type


@pytest.mark.parametrize("command", COMMANDS)
def test_a_previous_output_of_the_same_kind_is_replaced_whole(command, sources, tmp_path, capsys):
    prefix, kind = COMMANDS[command]
    out, before = previous_output(sources, kind, tmp_path)
    assert run([*prefix(sources), str(out)], capsys)[0] == 0
    assert tree_hashes(out) != before[0]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_run_folder_or_extra_files_are_not_a_previous_output(sources, tmp_path, capsys):
    """A gptlite model with anything beside it (a run's train_config.json and checkpoints/, a hand-written
    README) is not a previous conversion: replacing it would delete those."""
    for extra in ["train_config.json", "checkpoints/checkpoint-10/model.safetensors", "README.md"]:
        out = tmp_path / extra.split("/")[0].replace(".", "-")
        shutil.copytree(sources["previous-lite"], out)
        (out / extra).parent.mkdir(parents=True, exist_ok=True)
        (out / extra).write_text("{}")
        hashes = tree_hashes(out)
        status, line = run(["from-hf", str(sources["hf"]), str(out)], capsys)
        assert status == 2 and "does not hold a gptlite model folder" in line, extra
        assert tree_hashes(out) == hashes
    broken = tmp_path / "broken"
    shutil.copytree(sources["previous-lite"], broken)
    (broken / "config.json").write_text("{not json")
    assert run(["from-hf", str(sources["hf"]), str(broken)], capsys)[0] == 2


def test_an_output_that_is_a_file(sources, tmp_path, capsys):
    (tmp_path / "out").write_text("x")
    status, line = run(["from-hf", str(sources["hf"]), str(tmp_path / "out")], capsys)
    assert status == 2 and "exists and is not a folder" in line
    assert (tmp_path / "out").read_text() == "x"
