"""Remote code: a saved folder loads and generates in a fresh Python process where gptlite cannot be imported.

The child process gets a temporary HF_HOME (so the remote-code module cache starts empty), HF_HUB_OFFLINE=1 and no
PYTHONPATH, runs in tmp_path, and starts with HIDE_GPTLITE, which wraps every finder on `sys.meta_path` so that
none of them finds gptlite, whether it is installed, installed in editable mode or reachable through sys.path.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import save_file

from gptlite import GPTLiteConfig, GPTLiteForCausalLM
from gptlite.tokenization import get_hf_tokenizer, save_tokenizer
from tests.reference_models import REMOTE_CODE

REPO_ROOT = Path(__file__).resolve().parents[1]
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


def test_hide_gptlite_hides_an_importable_gptlite(tmp_path):
    """The prelude is what makes the remote-code test meaningful: check it on a process where gptlite IS importable."""
    check = "import importlib.util; assert importlib.util.find_spec('gptlite')"
    visible = run_child(check, tmp_path, PYTHONPATH=str(REPO_ROOT))
    assert visible.returncode == 0, visible.stderr
    hidden = run_child(HIDE_GPTLITE + "\nprint('hidden')", tmp_path, PYTHONPATH=str(REPO_ROOT))
    assert hidden.returncode == 0, hidden.stderr
    assert hidden.stdout.strip() == "hidden"


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


def test_fresh_process_without_gptlite_loads_and_generates_the_same_tokens(tmp_path):
    folder, expected = saved_folder_and_expected_tokens(tmp_path)
    result = run_child(CHILD, tmp_path, str(folder), PROMPT, str(NEW_TOKENS))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "custom code" not in result.stdout  # no trust_remote_code prompt
    child = json.loads(result.stdout)
    assert child["input_ids"] == expected["input_ids"]
    assert len(child["output"]) == len(child["input_ids"]) + NEW_TOKENS
    assert child["output"] == expected["output"]


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


def test_fresh_process_without_gptlite_opens_every_auto_class_and_batches_like_one_by_one(tmp_path):
    check_every_auto_class(tmp_path)
