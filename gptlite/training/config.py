"""Every setting of a training run, in one object: :class:`TrainConfig`, nested by concern.

``TrainConfig.data`` (:class:`~gptlite.training.data.DataConfig`, what the data pipeline takes), ``.model``,
``.optim``, ``.eval`` and ``.run``. Each field is also a ``gptlite-train`` flag (``emb_dim`` is ``--emb-dim``)
and a ``--config`` file key; field names are unique across the parts, so files, ``run.json`` and checkpoints
keep the settings as one flat mapping (:meth:`TrainConfig.to_dict`, :meth:`TrainConfig.from_flat`).
Every value is checked once, by the part that holds it, naming the flag.

The defaults are the main job, ``gptlite-train`` with no arguments: a small GPT trained on the Python
documentation that CPython ships (``pydoc_data.topics``) in a few minutes on two CPU cores.
:mod:`gptlite.training.recipes` holds the book's settings and merges recipe, config file and flags.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from gptlite.configuration_gptlite import GPTLiteConfig, preset_names
from gptlite.training.data import DataConfig
from gptlite.training.flags import field_types, flag, require, require_at_least_or_none, require_positive, setting
from gptlite.training.schedule import CLIP_MODES, SCHEDULES, LRSchedule, resolve_warmup

__all__ = [
    "MIXED_PRECISIONS", "SECTIONS", "TRACKERS", "EvalSettings", "ModelSettings", "OptimSettings", "RunSettings",
    "TrainConfig",
]  # fmt: skip

MIXED_PRECISIONS: tuple[str, ...] = ("no", "bf16", "fp16")
TRACKERS: tuple[str, ...] = ("tensorboard", "trackio", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive")
_ATTENTION = ("sdpa", "eager")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class ModelSettings:
    """The model a run trains: its size, or a preset, or a model to start from; and how it computes."""

    preset: str | None = setting(None, "A GPT-2 size (gpt2-small/124M, gpt2-medium, gpt2-large, gpt2-xl): fixes "
                                 "emb_dim, n_layers, n_heads, qkv_bias.")
    emb_dim: int = setting(128, "Width of the residual stream.")
    n_layers: int = setting(6, "Number of transformer blocks.")
    n_heads: int = setting(4, "Attention heads per block (must divide --emb-dim).")
    drop_rate: float = setting(0.0, "Dropout rate (embeddings, attention weights, residual branches).")
    qkv_bias: bool = setting(False, "Biases on the query, key and value projections.")
    tie_word_embeddings: bool = setting(False, "Share the output head with the token embedding (GPT-2 does, the "
                                        "book does not).")
    initializer: str = setting("gpt2", "Weight initialisation: gpt2 (normal 0.02, scaled residual projections) or "
                               "book (PyTorch defaults).")
    attn_implementation: str = setting("sdpa", "Attention kernel: sdpa (PyTorch's fused attention) or eager (the "
                                       "book's explicit softmax).")
    fast_dropout: bool = setting(True, "On CPU, draw dropout masks 4x faster (probability rounded to a multiple of "
                                 "2^-15); false: torch's F.dropout.")
    fused_gelu: bool = setting(True, "In bf16 on CPU, GELU and its gradient as one compiled loop each (2x faster; "
                               "needs a C++ compiler, else ATen).")
    init_from: str | None = setting(None, "Start from this saved or converted model (folder or Hub id) instead of "
                                    "random weights.")

    def __post_init__(self) -> None:
        # The sizes, the dropout rate and the initializer are the model configuration's: TrainConfig checks them
        # by building it, so that each rule lives in one place.
        names = ", ".join(preset_names())
        require(self.preset is None or self.preset in preset_names(), "preset", f"one of {names}", self)
        choices = ", ".join(_ATTENTION)
        require(self.attn_implementation in _ATTENTION, "attn_implementation", f"one of {choices}", self)


@dataclass
class OptimSettings:
    """How the weights are updated: batches, length of the run, learning-rate schedule, AdamW and clipping."""

    batch_size: int = setting(8, "Windows per batch on each process.")
    grad_accum: int = setting(1, "Batches accumulated into one optimizer step.")
    epochs: int = setting(3, "Passes over the training windows (ignored when --max-steps is set).")
    max_steps: int | None = setting(None, "Stop after this many optimizer steps (overrides --epochs).")
    schedule: str = setting("cosine", "Learning-rate schedule: cosine (linear warmup, cosine decay) or constant "
                            "(--peak-lr throughout).")
    initial_lr: float = setting(1e-5, "Learning rate at the first warmup step (cosine).")
    peak_lr: float = setting(2e-3, "Learning rate at the end of warmup (cosine), or throughout (constant).")
    min_lr: float = setting(1e-5, "Learning rate the cosine decays to.")
    warmup_steps: int | None = setting(None, "Warmup steps (default: --warmup-ratio of all steps).")
    warmup_ratio: float = setting(0.1, "Share of all optimizer steps spent warming up, when --warmup-steps is not "
                                  "given.")
    weight_decay: float = setting(0.1, "AdamW weight decay (applied to every parameter, as the book does).")
    grad_clip: float | None = setting(1.0, "Clip the gradient norm to this value (none: no clipping).")
    clip_mode: str = setting("after-warmup", "When --grad-clip applies: after-warmup (appendix D, from the first "
                             "step after warmup), always, never, or book-d4 (D.4's listing as printed: from the "
                             "second step after warmup).")

    def __post_init__(self) -> None:
        require_positive(self, "batch_size", "grad_accum", "epochs")
        require_at_least_or_none(self, 1, "max_steps")
        require_at_least_or_none(self, 0, "warmup_steps")
        require(0.0 <= self.warmup_ratio <= 1.0, "warmup_ratio", "in [0, 1]", self)
        # inf passes ">= 0" but trains NaN weights from the first step: every rate must be a finite number.
        for name in ("initial_lr", "peak_lr", "min_lr", "weight_decay"):
            require(_finite(getattr(self, name)) and getattr(self, name) >= 0, name, "a finite number >= 0", self)
        require(self.peak_lr > 0, "peak_lr", "> 0", self)
        require(self.grad_clip is None or _finite(self.grad_clip) and self.grad_clip > 0, "grad_clip",
                "a finite number > 0 (or none)", self)
        require(self.schedule in SCHEDULES, "schedule", f"one of {', '.join(SCHEDULES)}", self)
        require(self.clip_mode in CLIP_MODES, "clip_mode", f"one of {', '.join(CLIP_MODES)}", self)

    def lr_schedule(self, total_steps: int) -> LRSchedule:
        """The learning-rate schedule of a run of ``total_steps`` optimizer steps."""
        warmup = 0
        if self.schedule == "cosine":
            try:
                warmup = resolve_warmup(total_steps, self.warmup_steps, self.warmup_ratio)
            except ValueError as err:
                raise ValueError(f"--warmup-steps {self.warmup_steps}: {err}") from None
        return LRSchedule(name=self.schedule, total_steps=total_steps, warmup_steps=warmup, peak_lr=self.peak_lr,
                          initial_lr=self.initial_lr, min_lr=self.min_lr)


@dataclass
class EvalSettings:
    """What the run measures and shows while it trains: evaluations, samples and trackers."""

    eval_freq: int = setting(50, "Evaluate every this many optimizer steps, the first step included.")
    eval_iter: int = setting(5, "Batches of the training and validation splits each evaluation averages over.")
    start_context: str = setting("Every effort moves you", "Prompt continued greedily after every epoch, to watch "
                                 "the model learn.")
    sample_tokens: int = setting(50, "Tokens generated for the sample after each epoch.")
    report_to: list[str] = setting(factory=list, help="Experiment trackers to log to through Accelerate "
                                   "(tensorboard, trackio, wandb, ...; none by default).")

    def __post_init__(self) -> None:
        require_positive(self, "eval_freq", "eval_iter", "sample_tokens")
        self.report_to = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to)
        self.report_to = [] if self.report_to in (["none"], []) else self.report_to
        for tracker in self.report_to:
            require(tracker in (*TRACKERS, "all"), "report_to", f"among {', '.join(TRACKERS)}, all or none", self)


@dataclass
class RunSettings:
    """Where the run writes, how it resumes and publishes, and how it runs on the machine."""

    output_dir: str = setting("runs/default", "Where the model, tokenizer, history.json, plots and checkpoints/ go.")
    checkpoint_every: int | None = setting(None, "Also save a checkpoint every this many optimizer steps (one is "
                                           "always saved at each epoch end).")
    keep_checkpoints: int = setting(2, "Number of most recent checkpoints kept in OUTPUT_DIR/checkpoints.")
    resume_from: str | None = setting(None, (
        "Continue a run from a checkpoint folder, or latest (the newest in OUTPUT_DIR/checkpoints), with the run's "
        "own settings (OUTPUT_DIR/run.json): other flags may only repeat them, except --epochs/--max-steps (longer: "
        "the extra steps train at the schedule's last rate), --eval-freq, --eval-iter, --start-context, "
        "--sample-tokens, --report-to, --checkpoint-every, --keep-checkpoints, --output-dir, --cache-dir, --num-proc, "
        "--push-to-hub and --grad-accum (with the processes, same product)."))
    overwrite: bool = setting(False, "Replace the run that OUTPUT_DIR holds (its checkpoints go now, its model when "
                              "this run's is saved).")
    push_to_hub: str | None = setting(None, "Hub repository (user/name, created if missing) to upload the final "
                                      "model, tokenizer and model card to once the run is saved (needs a login: hf "
                                      "auth login, or HF_TOKEN).")
    seed: int = setting(123, "Seeds the model's initialisation, dropout and the order of the training windows.")
    mixed_precision: str | None = setting(None, "no, bf16 or fp16 autocast (default: what `accelerate launch` was "
                                          "given, else no).")
    tf32: bool = setting(True, "On CUDA, let fp32 matrix multiplies use TF32 tensor cores (Ampere and newer); no "
                         "effect on CPU.")
    compile: bool = setting(False, "torch.compile the model (in place: saved names stay clean); pays off on CUDA, "
                            "the first steps compile.")
    book_exact: bool = setting(False, "Run the book's own loop draw for draw: chapter 5's, or appendix D's with a "
                               "schedule or clipping (one process; global-RNG shuffling; no checkpoints). With "
                               "--recipe book-appendix-d it also sets D.4's listing's peak LR.")

    def __post_init__(self) -> None:
        require_positive(self, "keep_checkpoints")
        require_at_least_or_none(self, 1, "checkpoint_every")
        precisions = ", ".join(MIXED_PRECISIONS)
        require(self.mixed_precision in (None, *MIXED_PRECISIONS), "mixed_precision", f"one of {precisions}", self)
        if self.push_to_hub is not None:  # before training, not after it: a typo must not cost the run's time
            try:
                validate_repo_id(self.push_to_hub)
            except HFValidationError as err:
                raise ValueError(f"--push-to-hub {self.push_to_hub!r} is not a Hub repository id (user/name): "
                                 f"{err}") from None


@functools.cache
def _flat_field_types() -> dict[str, Any]:
    return {name: hint for part in SECTIONS.values() for name, hint in field_types(part).items()}


# The parts of a run's settings, in the order of the help and of a printed config.
SECTIONS: dict[str, type] = {
    "data": DataConfig, "model": ModelSettings, "optim": OptimSettings, "eval": EvalSettings, "run": RunSettings,
}  # fmt: skip


@dataclass
class TrainConfig:
    """Settings of one training run: ``TrainConfig()`` is the main job; :meth:`from_flat` takes flat keys."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSettings = field(default_factory=ModelSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    run: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self) -> None:
        if self.data.streaming and self.optim.max_steps is None:
            raise ValueError("--streaming needs --max-steps: the number of windows of a stream is unknown in advance")
        self.model_config()  # the architecture's rules are the model configuration's

    @staticmethod
    def field_types() -> dict[str, Any]:
        """Every setting's type hint by its flat name (``emb_dim``, ``batch_size``, ...)."""
        return _flat_field_types()

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> TrainConfig:
        """The settings from one flat mapping of field names (a ``--config`` file, ``run.json``, flags).

        Raises:
            ValueError: an unknown key (named), or a value its part refuses (naming the flag).
        """
        unknown = sorted(set(values) - set(cls.field_types()))
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}")
        parts = {name: part(**{k: v for k, v in values.items() if k in part.__dataclass_fields__})
                 for name, part in SECTIONS.items()}
        return cls(**parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain flat values (JSON/YAML-ready), as written to ``train_config.json`` and read back by ``--config``."""
        return {k: v for name in SECTIONS for k, v in dataclasses.asdict(getattr(self, name)).items()}

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` (flat names) applied, checked as any new settings are."""
        return TrainConfig.from_flat({**self.to_dict(), **changes})

    def model_config(self) -> GPTLiteConfig:
        """The architecture of a freshly initialised model (with --preset, the preset's sizes)."""
        model = self.model
        common = {"context_length": self.data.context_length, "drop_rate": model.drop_rate,
                  "initializer": model.initializer}
        sizes = {"emb_dim": model.emb_dim, "n_layers": model.n_layers, "n_heads": model.n_heads,
                 "qkv_bias": model.qkv_bias, "tie_word_embeddings": model.tie_word_embeddings}
        try:
            if model.preset is not None:
                return GPTLiteConfig.from_preset(model.preset, **common)
            return GPTLiteConfig(**sizes, **common)
        except ValueError as err:  # "GPTLiteConfig.emb_dim must be ...": a flag, to the user who gave it
            message = str(err)
            for name in (*sizes, *common):
                message = re.sub(rf"(GPTLiteConfig\.)?\b{name}\b", flag(name), message)
            raise ValueError(message) from None
