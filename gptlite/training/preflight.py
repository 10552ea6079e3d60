"""Checks a run makes before its first token is read, for what would otherwise fail, or do nothing, only at the end.

* **trackers**: Accelerate drops a ``--report-to`` tracker that is not installed with a warning at the top of the
  log and trains on, so a run meant to be tracked is not; here it is refused, naming the package;
* **``--init-from`` against the data**: the data is tokenized with GPT-2's vocabulary, so a model with fewer
  token ids would fail at the first step (an index error deep in the embedding); checked when the settings are
  resolved (:func:`check_vocabulary`, called from :mod:`gptlite.training.recipes` and ``gptlite-eval``);
* **the output folder** and its parent must be writable: see :func:`gptlite.training.run_folder.check_writable`.
"""

from __future__ import annotations

from accelerate.tracking import get_available_trackers

from gptlite.errors import UsageError
from gptlite.tokenization import N_VOCAB

__all__ = ["check_trackers", "check_vocabulary"]

# The package each tracker needs (Accelerate's LoggerType names; most are the package's name).
_PACKAGES = {"comet_ml": "comet-ml", "tensorboard": "tensorboard (or tensorboardX)"}


def check_trackers(report_to: list[str]) -> None:
    """Refuse a ``--report-to`` tracker whose package is not installed (``all`` takes whichever are)."""

    available = {str(tracker) for tracker in get_available_trackers()}
    missing = [name for name in report_to if name != "all" and name not in available]
    if missing:
        packages = ", ".join(_PACKAGES.get(name, name) for name in missing)
        raise UsageError(f"--report-to {' '.join(missing)}: not installed (pip install {packages}), so the run would "
                         f"not be tracked; install it or leave it out of --report-to")


def check_vocabulary(vocab_size: int, what: str) -> None:
    """Refuse a model (``what`` names it, e.g. ``--init-from X``) that lacks some of GPT-2's token ids."""

    if vocab_size < N_VOCAB:
        raise UsageError(f"{what} has a vocabulary of {vocab_size} tokens, but the data is tokenized with GPT-2's "
                         f"{N_VOCAB} (ids up to {N_VOCAB - 1}, which the model cannot embed); use a model whose "
                         f"vocab_size is at least {N_VOCAB}")
