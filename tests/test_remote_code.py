"""Remote code: a saved folder loads and generates in a fresh Python process where gptlite cannot be imported.

The child process gets a temporary HF_HOME (so the remote-code module cache starts empty), HF_HUB_OFFLINE=1 and no
PYTHONPATH, runs in tmp_path, and starts with HIDE_GPTLITE, which wraps every finder on `sys.meta_path` so that
none of them finds gptlite, whether it is installed, installed in editable mode or reachable through sys.path.
"""

import json

import pytest

from tests.conftest import (
    CHILD,
    HIDE_GPTLITE,
    NEW_TOKENS,
    PROMPT,
    REPO_ROOT,
    check_every_auto_class,
    run_child,
    saved_folder_and_expected_tokens,
)


def test_hide_gptlite_hides_an_importable_gptlite(tmp_path):
    """The prelude is what makes the remote-code test meaningful: check it on a process where gptlite IS importable."""
    check = "import importlib.util; assert importlib.util.find_spec('gptlite')"
    visible = run_child(check, tmp_path, PYTHONPATH=str(REPO_ROOT))
    assert visible.returncode == 0, visible.stderr
    hidden = run_child(HIDE_GPTLITE + "\nprint('hidden')", tmp_path, PYTHONPATH=str(REPO_ROOT))
    assert hidden.returncode == 0, hidden.stderr
    assert hidden.stdout.strip() == "hidden"


@pytest.mark.slow  # a fresh Python process: ~4 s of imports
def test_fresh_process_without_gptlite_loads_and_generates_the_same_tokens(tmp_path):
    folder, expected = saved_folder_and_expected_tokens(tmp_path)
    result = run_child(CHILD, tmp_path, str(folder), PROMPT, str(NEW_TOKENS))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "custom code" not in result.stdout  # no trust_remote_code prompt
    child = json.loads(result.stdout)
    assert child["input_ids"] == expected["input_ids"]
    assert len(child["output"]) == len(child["input_ids"]) + NEW_TOKENS
    assert child["output"] == expected["output"]


@pytest.mark.slow  # a fresh Python process: ~4 s of imports
def test_fresh_process_without_gptlite_opens_every_auto_class_and_batches_like_one_by_one(tmp_path):
    check_every_auto_class(tmp_path)
