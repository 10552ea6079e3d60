"""Every setting of a training run, in one dataclass: the Python API and the CLI's flags (``--emb-dim`` is ``emb_dim``).

:class:`TrainConfig`'s defaults are the main job, ``gptlite-train`` with no arguments: a small GPT trained on
the Python documentation that CPython ships (``pydoc_data.topics``) in a few minutes on two CPU cores.
:mod:`gptlite.training.recipes` holds the book's settings and merges recipe, config file and flags.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from gptlite.configuration_gptlite import _PRESET_ALIASES, _PRESETS, GPTLiteConfig
from gptlite.training.data import DataConfig
from gptlite.training.schedule import CLIP_MODES, SCHEDULES, LRSchedule, resolve_warmup

__all__ = ["ARCHITECTURE_FIELDS", "MIXED_PRECISIONS", "TRACKERS", "TrainConfig", "flag"]

MIXED_PRECISIONS: tuple[str, ...] = ("no", "bf16", "fp16")
TRACKERS: tuple[str, ...] = ("tensorboard", "trackio", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive")
_ATTENTION = ("sdpa", "eager")
_INITIALIZERS = ("gpt2", "book")
# Fields a --preset fixes; recipes.build_config rejects them next to a preset given at the same level or later.
ARCHITECTURE_FIELDS: tuple[str, ...] = ("emb_dim", "n_layers", "n_heads", "qkv_bias", "tie_word_embeddings")


def flag(name: str) -> str:
    """The command-line flag of a field: ``"emb_dim"`` -> ``"--emb-dim"``."""
    return "--" + name.replace("_", "-")


@dataclass
class TrainConfig:
    """Settings of one training run. Each field is also a ``gptlite-train`` flag and a ``--config`` file key."""

    # -- data ---------------------------------------------------------------------------------
    data: list[str] = field(default_factory=list)
    """Text files, folders or globs to train on (JSONL/CSV/Parquet use --text-column), or the-verdict (the book's text,
    downloaded once into the cache); none: the built-in corpus."""
    dataset: str | None = None
    """Hugging Face Hub dataset name instead of local files (downloaded by `datasets` the first time)."""
    dataset_config: str | None = None
    """Configuration (subset) of the Hub dataset."""
    dataset_split: str = "train"
    """Split of the Hub dataset to train on."""
    validation_data: list[str] = field(default_factory=list)
    """Separate validation files, folders or globs (then --train-ratio is not used)."""
    validation_split: str | None = None
    """Split of the Hub dataset to validate on (e.g. validation)."""
    text_column: str = "text"
    """Column holding the text in JSONL/CSV/Parquet files and Hub datasets."""
    streaming: bool = False
    """Tokenize on the fly instead of caching the tokenized corpus (needs --max-steps)."""
    context_length: int = 128
    """Tokens per training window, and the model's context length."""
    stride: int | None = None
    """Step between window starts (default: --context-length, windows do not overlap)."""
    train_ratio: float = 0.9
    """Share of the corpus used for training when no validation data is given (the rest validates)."""
    cache_dir: str | None = None
    """Folder of the token cache (default: ~/.cache/gptlite/tokens)."""

    # -- model --------------------------------------------------------------------------------
    preset: str | None = None
    """A GPT-2 size (gpt2-small/124M, gpt2-medium, gpt2-large, gpt2-xl): fixes emb_dim, n_layers, n_heads, qkv_bias."""
    emb_dim: int = 128
    """Width of the residual stream."""
    n_layers: int = 6
    """Number of transformer blocks."""
    n_heads: int = 4
    """Attention heads per block (must divide --emb-dim)."""
    drop_rate: float = 0.0
    """Dropout rate (embeddings, attention weights, residual branches)."""
    qkv_bias: bool = False
    """Biases on the query, key and value projections."""
    tie_word_embeddings: bool = False
    """Share the output head with the token embedding (GPT-2 does, the book does not)."""
    initializer: str = "gpt2"
    """Weight initialisation: gpt2 (normal 0.02, scaled residual projections) or book (PyTorch defaults)."""
    attn_implementation: str = "sdpa"
    """Attention kernel: sdpa (PyTorch's fused attention) or eager (the book's explicit softmax)."""
    fast_dropout: bool = True
    """On CPU, draw dropout masks 4x faster (probability rounded to a multiple of 2^-15); false: torch's F.dropout."""
    fused_gelu: bool = True
    """In bf16 on CPU, GELU and its gradient as one compiled loop each (2x faster; needs a C++ compiler, else ATen)."""
    init_from: str | None = None
    """Start from this saved or converted model (folder or Hub id) instead of random weights."""

    # -- optimisation -------------------------------------------------------------------------
    batch_size: int = 8
    """Windows per batch on each process."""
    grad_accum: int = 1
    """Batches accumulated into one optimizer step."""
    epochs: int = 3
    """Passes over the training windows (ignored when --max-steps is set)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides --epochs)."""
    schedule: str = "cosine"
    """Learning-rate schedule: cosine (linear warmup, cosine decay) or constant (--peak-lr throughout)."""
    initial_lr: float = 1e-5
    """Learning rate at the first warmup step (cosine)."""
    peak_lr: float = 2e-3
    """Learning rate at the end of warmup (cosine), or throughout (constant)."""
    min_lr: float = 1e-5
    """Learning rate the cosine decays to."""
    warmup_steps: int | None = None
    """Warmup steps (default: --warmup-ratio of all steps)."""
    warmup_ratio: float = 0.1
    """Share of all optimizer steps spent warming up, when --warmup-steps is not given."""
    weight_decay: float = 0.1
    """AdamW weight decay (applied to every parameter, as the book does)."""
    grad_clip: float | None = 1.0
    """Clip the gradient norm to this value (none: no clipping)."""
    clip_mode: str = "after-warmup"
    """When --grad-clip applies: after-warmup (appendix D, from the first step after warmup), always, never, or
    book-d4 (D.4's listing as printed: from the second step after warmup)."""

    # -- monitoring ---------------------------------------------------------------------------
    eval_freq: int = 50
    """Evaluate every this many optimizer steps, the first step included."""
    eval_iter: int = 5
    """Batches of the training and validation splits each evaluation averages over."""
    start_context: str = "Every effort moves you"
    """Prompt continued greedily after every epoch, to watch the model learn."""
    sample_tokens: int = 50
    """Tokens generated for the sample after each epoch."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers to log to through Accelerate (tensorboard, trackio, wandb, ...; none by default)."""

    # -- checkpoints and outputs --------------------------------------------------------------
    output_dir: str = "runs/default"
    """Where the model, tokenizer, history.json, plots and checkpoints/ go."""
    checkpoint_every: int | None = None
    """Also save a checkpoint every this many optimizer steps (one is always saved at each epoch end)."""
    keep_checkpoints: int = 2
    """Number of most recent checkpoints kept in OUTPUT_DIR/checkpoints."""
    resume_from: str | None = None
    """Continue a run from a checkpoint folder, or latest (the newest in OUTPUT_DIR/checkpoints), with the run's own
    settings (OUTPUT_DIR/run.json): other flags may only repeat them, except --epochs/--max-steps (longer: the extra
    steps train at the schedule's last rate), --eval-freq, --eval-iter, --start-context, --sample-tokens,
    --report-to, --checkpoint-every, --keep-checkpoints, --output-dir, --cache-dir, --push-to-hub and --grad-accum
    (with the processes, same product)."""
    overwrite: bool = False
    """Replace the run that OUTPUT_DIR holds (its checkpoints go now, its model when this run's is saved)."""
    push_to_hub: str | None = None
    """Hub repository (user/name, created if missing) to upload the final model, tokenizer and model card to once the
    run is saved (needs a login: hf auth login, or HF_TOKEN)."""

    # -- run ----------------------------------------------------------------------------------
    seed: int = 123
    """Seeds the model's initialisation, dropout and the order of the training windows."""
    mixed_precision: str | None = None
    """no, bf16 or fp16 autocast (default: what `accelerate launch` was given, else no)."""
    tf32: bool = True
    """On CUDA, let fp32 matrix multiplies use TF32 tensor cores (Ampere and newer); no effect on CPU."""
    compile: bool = False
    """torch.compile the model (in place: saved names stay clean); pays off on CUDA, the first steps compile."""
    book_exact: bool = False
    """Run the book's own loop draw for draw: chapter 5's, or appendix D's with a schedule or clipping (one process;
    global-RNG shuffling; no checkpoints). With --recipe book-appendix-d it also sets D.4's listing's peak LR."""

    def __post_init__(self) -> None:
        for name in ("data", "validation_data", "report_to"):
            value = getattr(self, name)
            setattr(self, name, [value] if isinstance(value, str) else list(value))
        self.report_to = [] if self.report_to in (["none"], []) else self.report_to
        self.validate()

    def validate(self) -> None:
        """Reject impossible values, naming the flag and the value."""
        positive = ("context_length", "emb_dim", "n_layers", "n_heads", "batch_size", "grad_accum", "epochs")
        positive += ("eval_freq", "eval_iter", "sample_tokens", "keep_checkpoints")
        for name in positive:
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "a positive integer", self)
        for name in ("stride", "max_steps", "checkpoint_every", "warmup_steps"):
            value = getattr(self, name)
            low = 0 if name == "warmup_steps" else 1
            _check(value is None or (isinstance(value, int) and value >= low), name, f"an integer >= {low}", self)
        _check(self.emb_dim % self.n_heads == 0, "emb_dim", f"divisible by --n-heads={self.n_heads}", self)
        _check(0.0 <= self.drop_rate < 1.0, "drop_rate", "in [0, 1)", self)
        _check(0.0 < self.train_ratio <= 1.0, "train_ratio", "in (0, 1]", self)
        _check(0.0 <= self.warmup_ratio <= 1.0, "warmup_ratio", "in [0, 1]", self)
        # inf passes ">= 0" but trains NaN weights from the first step: every rate must be a finite number.
        for name in ("initial_lr", "peak_lr", "min_lr", "weight_decay"):
            _check(_finite(getattr(self, name)) and getattr(self, name) >= 0, name, "a finite number >= 0", self)
        _check(self.peak_lr > 0, "peak_lr", "> 0", self)
        _check(self.grad_clip is None or _finite(self.grad_clip) and self.grad_clip > 0, "grad_clip",
               "a finite number > 0 (or none)", self)
        _check(self.schedule in SCHEDULES, "schedule", f"one of {', '.join(SCHEDULES)}", self)
        _check(self.clip_mode in CLIP_MODES, "clip_mode", f"one of {', '.join(CLIP_MODES)}", self)
        _check(self.initializer in _INITIALIZERS, "initializer", f"one of {', '.join(_INITIALIZERS)}", self)
        _check(self.attn_implementation in _ATTENTION, "attn_implementation", f"one of {', '.join(_ATTENTION)}", self)
        presets = sorted({*_PRESETS, *_PRESET_ALIASES})
        _check(self.preset is None or self.preset in presets, "preset", f"one of {', '.join(presets)}", self)
        precisions = ", ".join(MIXED_PRECISIONS)
        _check(self.mixed_precision in (None, *MIXED_PRECISIONS), "mixed_precision", f"one of {precisions}", self)
        for tracker in self.report_to:
            _check(tracker in (*TRACKERS, "all"), "report_to", f"among {', '.join(TRACKERS)}, all or none", self)
        if self.streaming and self.max_steps is None:
            raise ValueError("--streaming needs --max-steps: the number of windows of a stream is unknown in advance")
        if self.push_to_hub is not None:
            _check_repo_id(self.push_to_hub)
        if self.data and self.dataset is not None:
            raise ValueError(f"give either --data ({' '.join(self.data)}) or --dataset ({self.dataset}), not both")

    # -- derived settings ---------------------------------------------------------------------

    def data_config(self) -> DataConfig:
        """The :class:`DataConfig` of the training windows."""
        return DataConfig(
            data=list(self.data),
            dataset=self.dataset,
            dataset_config=self.dataset_config,
            dataset_split=self.dataset_split,
            validation_data=list(self.validation_data),
            validation_split=self.validation_split,
            text_column=self.text_column,
            streaming=self.streaming,
            context_length=self.context_length,
            stride=self.stride,
            train_ratio=self.train_ratio,
            cache_dir=self.cache_dir,
        )

    def model_config(self) -> GPTLiteConfig:
        """The architecture of a freshly initialised model (with --preset, the preset's sizes)."""
        common = {
            "context_length": self.context_length,
            "drop_rate": self.drop_rate,
            "initializer": self.initializer,
        }
        if self.preset is not None:
            return GPTLiteConfig.from_preset(self.preset, **common)
        return GPTLiteConfig(
            emb_dim=self.emb_dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            qkv_bias=self.qkv_bias,
            tie_word_embeddings=self.tie_word_embeddings,
            **common,
        )

    def lr_schedule(self, total_steps: int) -> LRSchedule:
        """The learning-rate schedule of a run of ``total_steps`` optimizer steps."""
        warmup = 0
        if self.schedule == "cosine":
            try:
                warmup = resolve_warmup(total_steps, self.warmup_steps, self.warmup_ratio)
            except ValueError as err:
                raise ValueError(f"--warmup-steps {self.warmup_steps}: {err}") from None
        return LRSchedule(
            name=self.schedule,
            total_steps=total_steps,
            warmup_steps=warmup,
            peak_lr=self.peak_lr,
            initial_lr=self.initial_lr,
            min_lr=self.min_lr,
        )

    def to_dict(self) -> dict:
        """Plain values (JSON/YAML-ready), as written to ``train_config.json`` and read back by ``--config``."""
        return dataclasses.asdict(self)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _check_repo_id(repo_id: str) -> None:
    # Before training, not after it: a typo in the repository name must not cost the run's time.
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"--push-to-hub {repo_id!r} is not a Hub repository id (user/name): {err}") from None


def _check(ok: bool, name: str, what: str, config: TrainConfig) -> None:
    if not ok:
        raise ValueError(f"{flag(name)} must be {what}, got {getattr(config, name)!r}")
