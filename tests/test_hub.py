"""Hub upload and model card.

The Hub cannot be reached from the tests, so the upload is tested at the huggingface_hub boundary: `HfApi.create_repo`
and `HfApi.create_commit` (the calls transformers' `push_to_hub` makes) are replaced by fakes that record the commit's
files, and `hf_hub_download` in `huggingface_hub.repocard` (how the existing README is fetched) answers "no README" or
returns a local one. Any other network access fails the test: sockets cannot connect.
"""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

import gptlite
from gptlite import GPTLiteConfig, GPTLiteForCausalLM
from gptlite.hub import DEFAULT_LICENSE, DEFAULT_TAGS, model_card, read_training_metrics, write_model_card
from gptlite.tokenization import get_hf_tokenizer
from tests.conftest import REMOTE_CODE

REPO_ID = "someone/tiny-gptlite"
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", *REMOTE_CODE}
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json"}
BOOK_HISTORY = {"train_losses": [9.8, 6.1, 3.2], "val_losses": [9.9, 6.6, 6.2], "tokens_seen": [512, 5632, 10752]}


def tiny_model(**overrides) -> GPTLiteForCausalLM:
    fields = {"vocab_size": 256, "context_length": 32, "emb_dim": 32, "n_heads": 2, "n_layers": 2, "drop_rate": 0.0}
    return GPTLiteForCausalLM(GPTLiteConfig(**{**fields, **overrides})).eval()


def front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n")[1])


def assert_same_weights(loaded: torch.nn.Module, original: torch.nn.Module) -> None:
    expected = original.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_push_to_hub_uploads_weights_code_tokenizer_and_card_in_one_commit(hub, tmp_path):
    model = tiny_model()
    commit = gptlite.push_to_hub(model, REPO_ID)

    assert hub.created[0]["repo_id"] == REPO_ID
    assert commit.oid == "0" * 40
    assert set(hub.files) == MODEL_FILES | TOKENIZER_FILES | {"README.md"}
    package_dir = Path(gptlite.__file__).parent
    for name in REMOTE_CODE:
        assert hub.files[name] == (package_dir / name).read_bytes()

    meta = front_matter(hub.readme())
    assert meta["library_name"] == "transformers"
    assert meta["license"] == DEFAULT_LICENSE
    assert meta["pipeline_tag"] == "text-generation"
    assert meta["tags"] == list(DEFAULT_TAGS)
    assert "model-index" not in meta  # no metrics known
    assert f'from_pretrained("{REPO_ID}", trust_remote_code=True)' in hub.readme()
    assert f"| parameters | {model.num_parameters():,} |" in hub.readme()

    folder = hub.materialize(tmp_path / "downloaded")
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert type(loaded) is GPTLiteForCausalLM
    assert_same_weights(loaded, model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.model_max_length == model.config.context_length
    text = "Every effort moves you <|endoftext|>"
    assert tokenizer(text)["input_ids"] == get_hf_tokenizer()(text)["input_ids"]


def test_push_reads_the_training_history_next_to_the_loaded_weights(hub, tmp_path):
    run = tmp_path / "run"
    tiny_model().save_pretrained(run)
    (run / "history.json").write_text(json.dumps(BOOK_HISTORY))
    model = AutoModelForCausalLM.from_pretrained(run)

    gptlite.push_to_hub(model, REPO_ID)

    assert "history.json" not in hub.files  # the folder that was uploaded is a fresh save, not the run folder
    meta = front_matter(hub.readme())
    [entry] = meta["model-index"]
    assert entry["name"] == "tiny-gptlite"
    values = {(r["dataset"]["split"], m["type"]): m["value"] for r in entry["results"] for m in r["metrics"]}
    assert values == {
        ("train", "loss"): 3.2,
        ("validation", "loss"): 6.2,
        ("validation", "perplexity"): round(math.exp(6.2), 4),
    }
    assert all(r["task"]["type"] == "text-generation" for r in entry["results"])
    assert "| tokens_seen | 10752 |" in hub.readme()


def test_transformers_own_push_to_hub_is_left_as_transformers_has_it(hub):
    # No class patched: model.push_to_hub uploads what transformers uploads (the model, its code, its card).
    commit = tiny_model().push_to_hub(REPO_ID)
    assert commit.oid == "0" * 40
    assert MODEL_FILES <= set(hub.files)
    assert not TOKENIZER_FILES & set(hub.files)
    assert "gptlite" not in front_matter(hub.readme()).get("tags", [])


def test_gptlite_push_to_hub_with_options(hub, tmp_path):
    model = tiny_model(tie_word_embeddings=True)
    gptlite.push_to_hub(
        model,
        REPO_ID,
        metrics={"train_loss": 2.5, "eval_loss": 3.0, "epoch": 4},
        dataset="the-verdict",
        license="mit",
        tags=["book"],
        tokenizer=False,
        max_shard_size="50KB",
        commit_message="Train 4 epochs",
        private=True,
    )

    assert hub.created[0]["private"] is True
    assert hub.commits[0]["commit_message"] == "Train 4 epochs"
    shards = {name for name in hub.files if name.startswith("model-")}
    assert len(shards) >= 2
    assert set(hub.files) == (MODEL_FILES - {"model.safetensors"}) | shards | {
        "model.safetensors.index.json",
        "README.md",
    }

    meta = front_matter(hub.readme())
    assert meta["license"] == "mit"
    assert meta["datasets"] == ["the-verdict"]
    assert meta["tags"] == [*DEFAULT_TAGS, "book"]
    results = meta["model-index"][0]["results"]
    assert {r["dataset"]["type"] for r in results} == {"the-verdict"}
    assert {m["name"]: m["value"] for r in results for m in r["metrics"]} == {
        "Training loss": 2.5,
        "Validation loss": 3.0,
        "Validation perplexity": round(math.exp(3.0), 4),
    }

    loaded = AutoModelForCausalLM.from_pretrained(hub.materialize(tmp_path / "downloaded"))
    assert loaded.out_head.weight is loaded.model.tok_emb.weight
    assert_same_weights(loaded, model)


def test_a_hand_written_card_on_the_hub_keeps_its_text(hub, tmp_path):
    existing = tmp_path / "README.md"
    existing.write_text("---\nlicense: cc-by-4.0\ntags:\n- poetry\n---\n\n# My model\n\nWritten by hand.\n")
    hub.existing_readme = existing

    gptlite.push_to_hub(tiny_model(), REPO_ID, metrics={"val_loss": 4.0}, tokenizer=False)

    readme = hub.readme()
    assert readme.split("---\n", 2)[2].strip() == "# My model\n\nWritten by hand."
    meta = front_matter(readme)
    assert meta["license"] == "cc-by-4.0"
    assert meta["tags"] == [*DEFAULT_TAGS, "poetry"]
    assert meta["library_name"] == "transformers"
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 4.0


def test_gptlite_generated_card_is_regenerated_on_the_next_push(hub, tmp_path):
    old = tmp_path / "README.md"
    model_card(tiny_model().config, repo_id=REPO_ID, metrics={"val_loss": 9.0}, tags=["v1"]).save(old)
    hub.existing_readme = old

    gptlite.push_to_hub(tiny_model(), REPO_ID, metrics={"val_loss": 4.0}, tokenizer=False)

    meta = front_matter(hub.readme())
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 4.0
    assert "v1" in meta["tags"]
    assert "9.0000" not in hub.readme()


def test_gptlite_push_to_hub_rejects_other_models(hub):
    with pytest.raises(TypeError, match="gptlite model"):
        gptlite.push_to_hub(torch.nn.Linear(2, 2), REPO_ID)
    assert hub.commits == []


# --- Model card helpers (no upload) -------------------------------------------------------------------------------


def test_read_training_metrics_formats(tmp_path):
    assert read_training_metrics(tmp_path) == {}

    (tmp_path / "all_results.json").write_text(json.dumps({"train_loss": 3.5, "eval_loss": 4.0, "epoch": 2.0}))
    assert read_training_metrics(tmp_path) == {
        "train_loss": 3.5,
        "eval_loss": 4.0,
        "epoch": 2.0,
        "eval_perplexity": math.exp(4.0),
    }

    (tmp_path / "history.json").write_text(json.dumps({**BOOK_HISTORY, "dataset": "the-verdict"}))
    metrics = read_training_metrics(tmp_path)  # history.json wins
    assert metrics == {
        "train_loss": 3.2,
        "val_loss": 6.2,
        "tokens_seen": 10752,
        "val_perplexity": math.exp(6.2),
        "dataset": "the-verdict",
    }

    # gptlite's training loop (training.monitoring.History): per-evaluation lists, null where there was no value.
    history = {
        "step": [0, 10],
        "epoch": [0.5, 1.0],
        "tokens_seen": [512, 5120],
        "train_loss": [9.0, 5.5],
        "val_loss": [None, None],
        "lr": [0.0004, 0.0001],
        "step_loss": [9.1, 5.4],
    }
    (tmp_path / "history.json").write_text(json.dumps(history))
    assert read_training_metrics(tmp_path) == {
        "step": 10,
        "epoch": 1.0,
        "tokens_seen": 5120,
        "train_loss": 5.5,
        "lr": 0.0001,
        "step_loss": 5.4,
    }

    (tmp_path / "history.json").write_text("{not json")
    with pytest.raises(ValueError, match="history.json"):
        read_training_metrics(tmp_path)


def test_write_model_card_for_a_saved_folder(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    (tmp_path / "history.json").write_text(json.dumps({**BOOK_HISTORY, "dataset": "the-verdict"}))

    readme = write_model_card(tmp_path).read_text()

    meta = front_matter(readme)
    assert meta["library_name"] == "transformers"
    assert meta["datasets"] == ["the-verdict"]
    assert meta["model-index"][0]["results"][0]["dataset"]["name"] == "the-verdict"
    assert "| layers (`n_layers`) | 2 |" in readme
    assert "| val_loss | 6.2000 |" in readme
