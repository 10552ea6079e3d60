"""What gptlite's commands print besides their own lines."""

from __future__ import annotations

from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
from transformers.utils import logging

__all__ = ["quiet_transformers_bars"]


def quiet_transformers_bars() -> None:
    """Turn off transformers' own progress bars ("Loading weights", "Writing model shards"): they flash between a
    command's lines for an instant's work. Download bars (huggingface_hub's) stay as they were: those take time."""
    downloads_shown = not are_progress_bars_disabled()
    logging.disable_progress_bar()  # also turns huggingface_hub's off, so those are turned back on
    if downloads_shown:
        enable_progress_bars()
