import time
from types import SimpleNamespace

import pytest

from gptlite.training.monitoring import Progress


class _Accelerator(SimpleNamespace):
    def log(self, values, step):
        self.logged.append((step, values))


def _run(progress: Progress, durations: list[float], tokens: int) -> None:
    for step, seconds in enumerate(durations, start=1):
        progress.start_step()
        time.sleep(seconds)
        progress.end_step(step, loss=1.0, lr=1e-3, tokens=tokens)


def test_tokens_per_second_is_the_steady_state_after_the_first_step_and_mfu_is_per_device():
    accelerator = _Accelerator(is_main_process=False, num_processes=2, logged=[])
    progress = Progress(accelerator, total_steps=3, flops_per_token=1e6, peak_flops=1e9)
    _run(progress, [0.3, 0.05, 0.05], tokens=1000)  # a slow first step, as warm-up makes it
    assert progress.train_tokens == 3000
    # 2000 tokens over ~0.1 s; counting the first step (0.3 s) too would give 3000 / 0.4 s = 7500.
    assert 8_000 < progress.tokens_per_second < 20_500
    per_device = progress.tokens_per_second / 2
    assert progress.mfu == pytest.approx(per_device * 1e6 / 1e9)
    assert "mfu" in accelerator.logged[-1][1]


def test_without_flops_there_is_no_mfu_and_one_step_still_gives_a_rate():
    accelerator = _Accelerator(is_main_process=False, num_processes=1, logged=[])
    progress = Progress(accelerator, total_steps=1)
    _run(progress, [0.05], tokens=500)
    assert progress.mfu is None
    assert 0 < progress.tokens_per_second <= 10_000
    assert "mfu" not in accelerator.logged[-1][1]


@pytest.mark.parametrize("tokens_per_step", [1024, 32768])  # the main job's scale, and a GPU run's millions
def test_the_loss_figures_token_axis_labels_do_not_run_into_one_another(tokens_per_step):
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from gptlite.training import plots
    from gptlite.training.monitoring import History

    history = History()
    for step in [*range(0, 333, 50), 332]:
        history.record_eval(step, step / 111, (step + 1) * tokens_per_step, 5.0, 5.1)
    fig = plots.loss_figure(history)
    renderer = FigureCanvasAgg(fig).get_renderer()
    top = fig.axes[1]  # the twin axis: tokens seen
    boxes = [label.get_window_extent(renderer) for label in top.get_xticklabels() if label.get_text()]
    assert len(boxes) >= 3 and all(len(label.get_text()) <= 5 for label in top.get_xticklabels())
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))  # left to right, with room between
