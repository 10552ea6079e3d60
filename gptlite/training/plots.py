"""The run's figures: the book's loss plot (``loss.png``) and the learning rate of every step (``lr.png``).

matplotlib is imported inside the functions, with the Agg canvas, so training never needs a display, and a run
pays its import (0.4 s measured on top of torch and transformers) only when it draws, at its end.
"""

from __future__ import annotations

import os
from pathlib import Path

from gptlite.training.monitoring import History

__all__ = ["loss_figure", "matplotlib_missing", "plot_losses", "plot_lr"]


def matplotlib_missing() -> str | None:
    """Why the figures cannot be drawn in this environment (matplotlib does not import), or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        return str(error)
    return None


def _figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    return out


def plot_losses(history: History, path: str | os.PathLike[str]) -> Path:
    """Chapter 5's figure: training and validation loss against epochs, with tokens seen on a twin x axis."""
    return _save(loss_figure(history), path)


def loss_figure(history: History):
    """The matplotlib ``Figure`` that :func:`plot_losses` saves."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    fig = _figure((5, 3))
    ax1 = fig.add_subplot()
    ax1.plot(history.epoch, history.train_loss, label="Training loss")
    val = [float("nan") if v is None else v for v in history.val_loss]
    if any(v == v for v in val):  # at least one number (NaN != NaN)
        ax1.plot(history.epoch, val, linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    # The book's trick: an invisible second plot gives the top axis the tokens-seen scale.
    ax2 = ax1.twiny()
    ax2.plot(history.tokens_seen, history.train_loss, alpha=0)
    ax2.set_xlabel("Tokens seen")
    # Counts in the hundreds of thousands written out in full run into one another on a 5-inch axis.
    ax2.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax2.xaxis.set_major_formatter(FuncFormatter(_short_count))
    fig.tight_layout()
    return fig


def _short_count(value: float, _position: int | None = None) -> str:
    """``1250000`` -> ``"1.25M"``, ``150000`` -> ``"150k"``."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def plot_lr(history: History, path: str | os.PathLike[str]) -> Path:
    """The learning rate of every optimizer step, as the run used it."""
    fig = _figure((5, 3))
    ax = fig.add_subplot()
    ax.plot(range(len(history.lr)), history.lr)
    ax.set_xlabel("Optimizer step")
    ax.set_ylabel("Learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    return _save(fig, path)
