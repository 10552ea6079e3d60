"""Check that a saved gptlite folder works, through its remote code, with transformers' pipeline, peft and lm-eval.

Run in a venv where gptlite is NOT installed, so the folder's own `configuration_gptlite.py`, `modeling_gptlite.py`
and `compat.py` are what run (everything is loaded with `trust_remote_code=True`, offline):

1. pipeline: `pipeline("text-generation")` greedy on prompts of different lengths in one call with batch_size=3
   (left padding) gives the same token ids as each prompt on its own.
2. peft: LoRA on `W_query`/`W_value` of AutoModelForCausalLM; a few AdamW steps lower the loss; `merge_and_unload()`
   gives the adapted model's logits; the saved adapter reloaded onto a fresh base gives them too. Then LoRA with
   task_type SEQ_CLS on AutoModelForSequenceClassification (num_labels=2): `score` is trainable (modules_to_save)
   and a padded forward+backward reaches it and the LoRA weights.
3. lm-eval: `lm_eval.simple_evaluate(model="hf")` on two local tasks (a jsonl read by `dataset_path: json`), one
   `loglikelihood` and one `generate_until`, with batch_size 2 and 1: log-likelihoods within 1e-5, same generated
   text; one request's log-likelihood recomputed from AutoModelForCausalLM logits.

Setup (Python 3.11; the CPU torch wheel first, so the clients do not pull a CUDA build):

    python3 -m venv venvs/clients
    venvs/clients/bin/pip install torch==2.13.0
    venvs/clients/bin/pip install "transformers==5.25.0" peft lm-eval datasets accelerate
    venvs/clients/bin/python -c "import gptlite"    # must fail

Run (from the repository root; FOLDER from `save_pretrained` + `gptlite.tokenization.save_tokenizer`):

    venvs/clients/bin/python scripts/check_clients.py FOLDER

One line per check, PASS or FAIL with the measured differences; exit status 0 only if all pass.
"""

import importlib.util
import json
import os
import sys
import tempfile
import traceback

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

PROMPTS = ["Hi", "Every effort moves you", "The quick brown fox jumps over the lazy dog, and then it"]
TEXT = "Every effort moves you forward. Every effort moves you closer to the goal. " * 4
DOCS = [
    {"context": "Every effort moves", "continuation": " you"},
    {"context": "The quick brown fox jumps over the lazy", "continuation": " dog, and then"},
    {"context": "Hello", "continuation": " world."},
]


def check_pipeline(folder: str) -> tuple[bool, str]:
    from transformers import pipeline

    pipe = pipeline("text-generation", model=folder, trust_remote_code=True, device="cpu")
    pad, module = pipe.tokenizer.pad_token_id, type(pipe.model).__module__
    same_ids = same_text = 0
    for kwargs in ({"return_tensors": True}, {"return_full_text": False}):
        kwargs.update(max_new_tokens=12, do_sample=False)
        batched = [out[0] for out in pipe(PROMPTS, batch_size=3, **kwargs)]
        for prompt, b in zip(PROMPTS, batched):
            s = pipe(prompt, **kwargs)[0]
            if "generated_text" in s:
                same_text += b["generated_text"] == s["generated_text"]
            else:  # batched `generated_token_ids` keep the batch's left padding (transformers' postprocess)
                b_ids, s_ids = list(b["generated_token_ids"]), list(s["generated_token_ids"])
                n_pad = len(b_ids) - len(s_ids)
                same_ids += b_ids[n_pad:] == s_ids and all(t == pad for t in b_ids[:n_pad])
    n = len(PROMPTS)
    return same_ids == same_text == n and module.startswith("transformers_modules."), (
        f"model class from {module}; batched (batch_size=3) vs alone: {same_ids}/{n} same token ids "
        f"(after the batch's left padding), {same_text}/{n} same new text"
    )


def check_peft_causal_lm(folder: str) -> tuple[bool, str]:
    from peft import LoraConfig, PeftModel, get_peft_model

    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    ids = tok(TEXT, return_tensors="pt").input_ids
    base = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    model = get_peft_model(base, LoraConfig(target_modules=["W_query", "W_value"], r=4, lora_alpha=8))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(input_ids=ids, labels=ids).loss
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    trained = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    model.eval()
    with torch.no_grad():
        final = model(input_ids=ids, labels=ids).loss.item()
        adapted = model(input_ids=ids).logits
    with tempfile.TemporaryDirectory() as adapter_dir:
        model.save_pretrained(adapter_dir)
        fresh = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
        reloaded = PeftModel.from_pretrained(fresh, adapter_dir).eval()
        with torch.no_grad():
            reload_diff = (reloaded(input_ids=ids).logits - adapted).abs().max().item()
    merged = model.merge_and_unload().eval()
    with torch.no_grad():
        merge_diff = (merged(input_ids=ids).logits - adapted).abs().max().item()
    ok = final < losses[0] - 0.1 and merge_diff < 1e-4 and reload_diff < 1e-5 and not isinstance(merged, PeftModel)
    return ok, (
        f"loss {losses[0]:.4f} -> {final:.4f} in {len(losses)} steps ({trained} LoRA params); "
        f"merged vs adapted max|dlogit| {merge_diff:.2e}; reloaded adapter vs adapted {reload_diff:.2e}"
    )


def check_peft_seq_cls(folder: str) -> tuple[bool, str]:
    from peft import LoraConfig, get_peft_model

    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    base = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=2, trust_remote_code=True, pad_token_id=tok.pad_token_id
    )
    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", target_modules=["W_query", "W_value"], r=4))
    saved = model.peft_config["default"].modules_to_save or []
    score_trainable = [n for n, p in model.named_parameters() if ".score." in n and p.requires_grad]
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    out = model(**batch, labels=torch.tensor([0, 1, 1]))
    out.loss.backward()
    graded = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    score_grad = any(".score." in n for n in graded)
    lora_grad = sum("lora_B" in n for n in graded)
    model.eval()
    with torch.no_grad():
        padded = model(**batch).logits
        alone = torch.cat([model(**tok(p, return_tensors="pt")).logits for p in PROMPTS])
    pad_diff = (padded - alone).abs().max().item()
    ok = "score" in saved and bool(score_trainable) and score_grad and lora_grad > 0 and pad_diff < 1e-5
    return ok, (
        f"modules_to_save={saved}; trainable score params {score_trainable}; loss {out.loss.item():.4f}, "
        f"grads on score {score_grad} and on {lora_grad} lora_B; left-padded vs alone max|dlogit| {pad_diff:.2e}"
    )


TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {output_type}
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{continuation}}}}"
"""
GEN_EXTRA = """generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 10
  do_sample: false
metric_list:
  - metric: exact_match
"""


def direct_loglikelihood(folder: str, context: str, continuation: str) -> float:
    """lm-eval's HFLM recipe (`_encode_pair`, then the logits of context+continuation[:-1]) done by hand."""
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    n_spaces = len(context) - len(context.rstrip())
    context, continuation = context[: len(context) - n_spaces], context[len(context) - n_spaces :] + continuation
    whole = tok(context + continuation, add_special_tokens=False).input_ids
    n_ctx = len(tok(context, add_special_tokens=False).input_ids)
    with torch.no_grad():
        logprobs = model(input_ids=torch.tensor([whole[:-1]])).logits[0].log_softmax(-1)
    targets = torch.tensor(whole[n_ctx:])
    return logprobs[n_ctx - 1 :].gather(-1, targets[:, None]).sum().item()


def check_lm_eval(folder: str) -> tuple[bool, str]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "docs.jsonl")
        with open(data, "w") as f:
            f.writelines(json.dumps(d) + "\n" for d in DOCS)
        for name, output_type, extra in [("gl_ll", "loglikelihood", ""), ("gl_gen", "generate_until", GEN_EXTRA)]:
            with open(os.path.join(tmp, f"{name}.yaml"), "w") as f:
                f.write(TASK_YAML.format(name=name, data=data, output_type=output_type) + extra)
        runs = {}
        for bs in (2, 1):
            res = lm_eval.simple_evaluate(
                model="hf", model_args=f"pretrained={folder},trust_remote_code=True,dtype=float32",
                tasks=["gl_ll", "gl_gen"], task_manager=TaskManager(include_path=tmp), batch_size=bs,
                device="cpu", log_samples=True,
            )
            runs[bs] = {t: sorted(res["samples"][t], key=lambda s: s["doc_id"]) for t in ("gl_ll", "gl_gen")}
    ll = {bs: [float(s["resps"][0][0][0]) for s in run["gl_ll"]] for bs, run in runs.items()}
    gen = {bs: [s["resps"][0][0] for s in run["gl_gen"]] for bs, run in runs.items()}
    ll_diff = max(abs(a - b) for a, b in zip(ll[2], ll[1]))
    gen_same = sum(a == b for a, b in zip(gen[2], gen[1]))
    context, continuation = runs[1]["gl_ll"][1]["arguments"][0][:2]
    direct_diff = abs(direct_loglikelihood(folder, context, continuation) - ll[1][1])
    ok = len(ll[1]) == len(DOCS) and ll_diff < 1e-5 and gen_same == len(DOCS) and direct_diff < 1e-5
    return ok, (
        f"loglikelihood bs2 vs bs1 max|d| {ll_diff:.2e} (e.g. {ll[1][1]:.4f}); generate_until {gen_same}/{len(DOCS)} "
        f"identical (e.g. {gen[1][1]!r}); request {context!r}+{continuation!r} vs direct logits |d| {direct_diff:.2e}"
    )


def main() -> int:
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} FOLDER", file=sys.stderr)
        return 2
    folder = os.path.abspath(sys.argv[1])
    checks = [check_pipeline, check_peft_causal_lm, check_peft_seq_cls, check_lm_eval]
    standalone = importlib.util.find_spec("gptlite") is None
    results = [("no_gptlite", standalone, "gptlite is " + ("not importable" if standalone else "importable here"))]
    for check in checks:
        torch.manual_seed(0)
        try:
            ok, detail = check(folder)
        except Exception as exc:  # a client's exception is a failed check, reported with where it came from
            ok, detail = False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        results.append((check.__name__.removeprefix("check_"), ok, detail))
    for name, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
