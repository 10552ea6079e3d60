"""Helpers shared by the tests under tests/: fixtures, tiny models and their transformers twins, a local HTTP server,
the remote-code child process. Tests import the plain ones as ``from tests.conftest import ...``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

from gptlite import GPTLiteConfig, GPTLiteForCausalLM
from gptlite.tokenization import get_hf_tokenizer, save_tokenizer
from tests import cores

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Tiny configs use bos/eos 50256 beyond their vocabulary on purpose (GPT-2's ids); transformers warns.
warnings.filterwarnings("ignore", message=".*must be `None` or an integer within the vocabulary.*")


def pytest_configure(config):
    cores.make_locks(config)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    with cores.share_of_the_machine(item):
        return (yield)


def pytest_runtest_setup(item):
    cores.set_threads(item)


def pytest_collection_modifyitems(config, items):
    cores.put_first(items)
    if torch.cuda.is_available():
        return
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (marked cuda)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(no_gpu)


@pytest.fixture
def verdict_text() -> str:
    path = SHARED_DATA / "the-verdict.txt"
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path.read_text(encoding="utf-8")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size)`` mounts a tmpfs of ``size`` (e.g. "1m") under tmp_path and returns it; skips where
    mounting is not allowed (needs root). Unmounted at the end."""
    mounted = []

    def mount(size: str) -> Path:
        point = tmp_path / f"tmpfs-{len(mounted)}"
        point.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                                               capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        # Lazy: a failed torch.save may keep its file open until the exception is collected.
        result = subprocess.run(["umount", "-l", str(point)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


@pytest.fixture
def small_tmpfs(tmpfs):
    """A 1 MiB tmpfs."""
    return tmpfs("1m")


# -- the Hub, faked at huggingface_hub's boundary (tests/test_hub.py and the training push) --------------------


class FakeHub:
    """Records what would have been sent: one entry per commit, {path_in_repo: bytes}."""

    def __init__(self, existing_readme: Path | None = None):
        self.existing_readme = existing_readme
        self.created: list[dict] = []
        self.commits: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        from huggingface_hub import RepoUrl

        self.created.append({"repo_id": repo_id, **kwargs})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, **kwargs):
        # The files live in a temporary folder that push_to_hub deletes afterwards: read them now.
        from huggingface_hub import CommitInfo

        files = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        self.commits.append({"repo_id": repo_id, "files": files, **kwargs})
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{'0' * 40}",
            commit_message=kwargs.get("commit_message") or "",
            commit_description=kwargs.get("commit_description") or "",
            oid="0" * 40,
        )

    def hf_hub_download(self, repo_id, filename, **kwargs):
        from huggingface_hub.errors import EntryNotFoundError

        if self.existing_readme is None:
            raise EntryNotFoundError(f"{filename} not found in {repo_id}")
        return str(self.existing_readme)

    @property
    def files(self) -> dict[str, bytes]:
        assert len(self.commits) == 1
        return self.commits[0]["files"]

    def readme(self) -> str:
        return self.files["README.md"].decode("utf-8")

    def materialize(self, folder: Path) -> Path:
        """The committed files as a local folder, as a download of the repository would give."""
        for name, data in self.files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        return folder


@pytest.fixture
def hub(monkeypatch):
    """The Hub, faked: ``HfApi.create_repo`` / ``create_commit`` (what transformers' ``push_to_hub`` calls) record
    the commit's files, ``hf_hub_download`` of the existing README answers "none" or a local one, and any other
    network access fails the test (sockets cannot connect)."""
    import socket

    import transformers.modeling_utils
    import transformers.utils.hub
    from huggingface_hub import HfApi

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)

    fake = FakeHub()
    # Bound methods of `fake`: set on the class, they are called without the HfApi instance.
    monkeypatch.setattr(HfApi, "create_repo", fake.create_repo)
    monkeypatch.setattr(HfApi, "create_commit", fake.create_commit)
    for unexpected in ("upload_folder", "upload_file", "create_branch"):
        monkeypatch.setattr(HfApi, unexpected, lambda *a, _name=unexpected, **kw: pytest.fail(f"unexpected {_name}"))
    # Transformers releases that call huggingface_hub's module-level functions (methods bound to a default HfApi at
    # import) bypass the class patches above: patch those names too where they exist.
    # (transformers 5.4's save_pretrained imports create_repo straight into modeling_utils.)
    for module in (transformers.utils.hub, transformers.modeling_utils):
        for name in ("create_repo", "create_commit"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, getattr(fake, name))
    monkeypatch.setattr("huggingface_hub.repocard.hf_hub_download", fake.hf_hub_download)
    return fake


# -- tiny gptlite models and their copies in transformers' own GPT-2 ----------------------------------------------

# What travels beside a saved gptlite model as remote code: the book's model and nothing else.
REMOTE_CODE = frozenset({"configuration_gptlite.py", "modeling_gptlite.py", "compat.py"})

TINY = {"vocab_size": 120, "context_length": 40, "emb_dim": 48, "n_heads": 4, "n_layers": 3, "drop_rate": 0.0}


def tiny_model(**overrides) -> GPTLiteForCausalLM:
    return GPTLiteForCausalLM(GPTLiteConfig(**{**TINY, **overrides})).eval()


def randomize_(model: torch.nn.Module) -> None:
    """Random values everywhere, biases and LayerNorm included, so no parameter goes untested."""
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)


def book_state_dict(model: GPTLiteForCausalLM) -> dict[str, torch.Tensor]:
    """The model's state dict under the book's GPTModel names (the trunk is `model.` inside gptlite)."""
    return {name.removeprefix("model."): tensor for name, tensor in model.state_dict().items()}


def to_gpt2(model: GPTLiteForCausalLM) -> GPT2LMHeadModel:
    """Copy gptlite weights into transformers' GPT-2, written out independently of gptlite.conversion."""
    c = model.config
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=c.vocab_size,
            n_positions=c.context_length,
            n_embd=c.emb_dim,
            n_layer=c.n_layers,
            n_head=c.n_heads,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=c.tie_word_embeddings,
        )
    ).eval()
    src = book_state_dict(model)
    dst = {
        "transformer.wte.weight": src["tok_emb.weight"],
        "transformer.wpe.weight": src["pos_emb.weight"],
        "transformer.ln_f.weight": src["final_norm.scale"],
        "transformer.ln_f.bias": src["final_norm.shift"],
        "lm_head.weight": src["out_head.weight"],
    }
    zeros = torch.zeros(c.emb_dim)
    for i in range(c.n_layers):
        p, h = f"trf_blocks.{i}.", f"transformer.h.{i}."
        # GPT-2's Conv1D stores (in, out); nn.Linear stores (out, in).
        dst[h + "attn.c_attn.weight"] = torch.cat(
            [src[p + f"att.{n}.weight"].T for n in ("W_query", "W_key", "W_value")], 1
        )
        dst[h + "attn.c_attn.bias"] = torch.cat(
            [src.get(p + f"att.{n}.bias", zeros) for n in ("W_query", "W_key", "W_value")]
        )
        dst[h + "attn.c_proj.weight"] = src[p + "att.out_proj.weight"].T
        dst[h + "attn.c_proj.bias"] = src[p + "att.out_proj.bias"]
        dst[h + "mlp.c_fc.weight"] = src[p + "ff.layers.0.weight"].T
        dst[h + "mlp.c_fc.bias"] = src[p + "ff.layers.0.bias"]
        dst[h + "mlp.c_proj.weight"] = src[p + "ff.layers.2.weight"].T
        dst[h + "mlp.c_proj.bias"] = src[p + "ff.layers.2.bias"]
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            dst[h + f"{theirs}.weight"] = src[p + f"{ours}.scale"]
            dst[h + f"{theirs}.bias"] = src[p + f"{ours}.shift"]
    missing, unexpected = gpt2.load_state_dict(dst, strict=False)
    assert not unexpected and all(k.endswith("attn.bias") or k.endswith("masked_bias") for k in missing)
    return gpt2


# -- a real HTTP server on 127.0.0.1 for the download tests: serves bytes, honours Range, can cut a response short


class LocalServer:
    """Serves ``files`` (path -> bytes) at ``url(path)``; ``cut_after`` bytes end the next full response early."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.cut_after: int | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def _serve(self, body: bool) -> None:
                server.requests.append((self.command, self.path, self.headers.get("Range")))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                if self.headers.get("Range"):
                    start, status = int(self.headers["Range"].removeprefix("bytes=").rstrip("-")), 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if not body:
                    return
                payload = data[start:]
                if server.cut_after is not None and status == 200:
                    payload, server.cut_after = payload[: server.cut_after], None  # a dropped connection
                    self.close_connection = True
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._serve(body=True)

            def do_HEAD(self) -> None:
                self._serve(body=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self) -> LocalServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- remote code: a saved folder loaded in a child process where gptlite cannot be imported (tests/test_remote_code.py
# tells how; tests/test_transformers_versions.py and tests/test_tokenization.py reuse the child) -----------------

PROMPT = "Every effort moves you"
NEW_TOKENS = 12

HIDE_GPTLITE = textwrap.dedent(
    """
    import importlib.util
    import sys

    class _HideGptlite:
        # Delegates to the wrapped finder, except that gptlite and its submodules are never found.
        def __init__(self, finder):
            self.finder = finder

        def find_spec(self, name, path=None, target=None):
            if name == "gptlite" or name.startswith("gptlite."):
                return None
            find_spec = getattr(self.finder, "find_spec", None)
            return None if find_spec is None else find_spec(name, path, target)

        def __getattr__(self, attr):
            return getattr(self.finder, attr)

    sys.meta_path[:] = [_HideGptlite(finder) for finder in sys.meta_path]
    assert importlib.util.find_spec("gptlite") is None, "gptlite is still importable"
    try:
        import gptlite  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError("import gptlite succeeded")
    """
)


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_MODULES_CACHE", "HF_HUB_CACHE")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
    return env


def run_child(
    code: str, tmp_path: Path, *args: str, python: str = sys.executable, **extra_env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, "-c", code, *args],
        cwd=tmp_path,
        env=child_env(tmp_path, **extra_env),
        stdin=subprocess.DEVNULL,  # transformers' trust_remote_code prompt must never wait for an answer
        capture_output=True,
        text=True,
        timeout=300,
    )


CHILD = HIDE_GPTLITE + textwrap.dedent(
    """
    import json
    import os

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, prompt, new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    # AutoTokenizer reads config.json (and so its auto_map) too: without the flag it asks whether to trust the code.
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)

    # The class came from the folder's files, cached under this process's HF_HOME; so did the siblings that
    # modeling_gptlite.py imports relatively (save_pretrained copied them).
    module = sys.modules[type(model).__module__]
    assert type(model).__name__ == "GPTLiteForCausalLM"
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    package = type(model).__module__.rsplit(".", 1)[0]
    for name in ("modeling_gptlite", "configuration_gptlite", "compat"):
        sibling = sys.modules[f"{package}.{name}"]
        assert os.path.realpath(sibling.__file__).startswith(os.path.realpath(os.environ["HF_HOME"])), sibling
    # Loading the model registered nothing with this transformers.
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    assert not [name for name in ALL_ATTENTION_FUNCTIONS if "gptlite" in name]

    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        output = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    expected = load_file("expected.safetensors")["logits"]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)

    assert not [name for name in sys.modules if name == "gptlite" or name.startswith("gptlite.")]
    print(json.dumps({"input_ids": inputs["input_ids"][0].tolist(), "output": output[0].tolist()}))
    """
)


def saved_folder_and_expected_tokens(tmp_path: Path) -> tuple[Path, dict]:
    """A tiny model saved with its tokenizer, its logits in tmp_path/expected.safetensors, and what it generates."""
    config = GPTLiteConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.0)
    torch.manual_seed(0)
    model = GPTLiteForCausalLM(config).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    save_tokenizer(folder, model_max_length=config.context_length)
    # modeling_gptlite.py's relative imports travel with it, and nothing else
    assert {p.name for p in folder.glob("*.py")} == REMOTE_CODE
    for name in REMOTE_CODE:
        assert (folder / name).read_bytes() == (REPO_ROOT / "gptlite" / name).read_bytes()

    inputs = get_hf_tokenizer()(PROMPT, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        expected = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)[0].tolist()
    save_file({"logits": logits.contiguous()}, str(tmp_path / "expected.safetensors"))
    return folder, {"input_ids": inputs["input_ids"][0].tolist(), "output": expected}


PROMPTS = ["Every effort moves you", "I", "HAD always thought Jack Gisburn rather a cheap genius"]

# Every Auto class from the folder, in a process without gptlite: the trunk, the classifier (head initialised), and
# a left-padded batch of prompts of different lengths generating what each prompt generates alone.
EVERY_AUTO_CLASS_CHILD = HIDE_GPTLITE + textwrap.dedent(
    """
    import json
    import sys

    import torch
    from transformers import (AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification, AutoTokenizer)

    folder, prompts = sys.argv[1], json.loads(sys.argv[2])
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    lm = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    trunk = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    classifier = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True, num_labels=2)
    tagger = AutoModelForTokenClassification.from_pretrained(folder, trust_remote_code=True, num_labels=3)
    classes = {type(m).__name__ for m in (lm, trunk, classifier, tagger)}

    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    options = {"max_new_tokens": 8, "do_sample": False}
    with torch.no_grad():
        batched = lm.generate(**batch, **options)[:, batch["input_ids"].shape[1]:].tolist()
        alone = [lm.generate(**tokenizer(p, return_tensors="pt"), **options)[0, -8:].tolist() for p in prompts]
        same_trunk = torch.equal(trunk(**batch).last_hidden_state, lm.model(**batch).last_hidden_state)
        class_logits = classifier.eval()(**batch).logits
    print(json.dumps({"classes": sorted(classes), "padding_side": tokenizer.padding_side, "batched": batched,
                      "alone": alone, "same_trunk": same_trunk, "class_logits_shape": list(class_logits.shape),
                      "trunk_equal": all(torch.equal(p, q) for p, q in zip(classifier.model.parameters(),
                                                                          lm.model.parameters()))}))
    """
)


def check_every_auto_class(tmp_path: Path, python: str = sys.executable) -> None:
    folder, _ = saved_folder_and_expected_tokens(tmp_path)
    result = run_child(EVERY_AUTO_CLASS_CHILD, tmp_path, str(folder), json.dumps(PROMPTS), python=python)
    assert result.returncode == 0, result.stderr[-4000:]
    child = json.loads(result.stdout.strip().splitlines()[-1])
    assert child["classes"] == ["GPTLiteForCausalLM", "GPTLiteForSequenceClassification",
                                "GPTLiteForTokenClassification", "GPTLiteModel"]
    assert child["padding_side"] == "left"
    assert child["batched"] == child["alone"]
    assert child["same_trunk"] and child["trunk_equal"]
    assert child["class_logits_shape"] == [len(PROMPTS), 2]


def reset_accelerate() -> None:
    """Accelerate keeps process-wide singletons (AcceleratorState, GradientState): forget them, as a new program."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def run_in_process(capsys, command, *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a gptlite command's ``main`` run in this process as a new program would run
    (Accelerate's singletons forgotten after it), asserting that nothing printed a traceback."""
    capsys.readouterr()
    try:
        command(list(argv))
        code = 0
    except SystemExit as done:
        code = done.code
    finally:
        reset_accelerate()
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def error_line(err: str) -> str:
    """The one ``PROG: error: ...`` line of ``err`` (asserting there is exactly one)."""
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    return lines[0]
