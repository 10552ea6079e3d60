import math

import pytest
import torch

from gptlite.training.schedule import (
    LRSchedule,
    build_scheduler,
    constant_lr,
    resolve_warmup,
    should_clip,
    warmup_cosine_lr,
)

TOTAL, WARMUP, PEAK, INITIAL, MIN = 100, 20, 1e-3, 1e-4, 1e-5


def book_lr(step: int) -> float:
    # Appendix D's loop body, written out independently of the module under test.
    if step < WARMUP:
        return INITIAL + step * (PEAK - INITIAL) / WARMUP
    progress = (step - WARMUP) / (TOTAL - WARMUP)
    return MIN + (PEAK - MIN) * 0.5 * (1 + math.cos(math.pi * progress))


def lr(step: int) -> float:
    return warmup_cosine_lr(step, TOTAL, WARMUP, PEAK, initial_lr=INITIAL, min_lr=MIN)


def test_cosine_matches_formula_at_key_steps():
    assert lr(0) == pytest.approx(INITIAL, rel=1e-12)
    assert lr(WARMUP - 1) == pytest.approx(INITIAL + (WARMUP - 1) * (PEAK - INITIAL) / WARMUP, rel=1e-12)
    assert lr(WARMUP) == pytest.approx(PEAK, rel=1e-12)  # end of warmup: cos(0) = 1
    middle = WARMUP + (TOTAL - WARMUP) // 2  # progress 0.5: halfway between peak and floor
    assert lr(middle) == pytest.approx(MIN + (PEAK - MIN) * 0.5, rel=1e-12)
    last = TOTAL - 1
    assert lr(last) == pytest.approx(MIN + (PEAK - MIN) * 0.5 * (1 + math.cos(math.pi * 79 / 80)), rel=1e-12)
    assert MIN < lr(last) < MIN * 1.1
    for step in range(TOTAL):
        assert lr(step) == pytest.approx(book_lr(step), rel=1e-12)


def test_cosine_is_monotone_in_each_phase():
    lrs = [lr(s) for s in range(TOTAL)]
    assert all(a < b for a, b in zip(lrs[:WARMUP], lrs[1 : WARMUP + 1]))
    assert all(a > b for a, b in zip(lrs[WARMUP:-1], lrs[WARMUP + 1 :]))


def test_cosine_edge_cases():
    # No decay phase: total == warmup must not divide by zero.
    assert warmup_cosine_lr(5, 5, 5, PEAK, initial_lr=INITIAL, min_lr=MIN) == MIN
    # No warmup: step 0 is the peak.
    assert warmup_cosine_lr(0, 10, 0, PEAK, initial_lr=INITIAL, min_lr=MIN) == pytest.approx(PEAK)
    # Past the end the lr stays at the floor instead of rising again.
    assert warmup_cosine_lr(TOTAL + 50, TOTAL, WARMUP, PEAK, min_lr=MIN) == pytest.approx(MIN)
    with pytest.raises(ValueError):
        warmup_cosine_lr(-1, TOTAL, WARMUP, PEAK)


def test_constant_schedule():
    assert constant_lr(0, 5e-4) == 5e-4
    assert constant_lr(12345, 5e-4) == 5e-4
    schedule = LRSchedule("constant", total_steps=10, peak_lr=4e-4)
    assert [schedule.lr(s) for s in range(10)] == [4e-4] * 10
    assert schedule(7) == 1.0


def test_resolve_warmup():
    assert resolve_warmup(100) == 20
    assert resolve_warmup(99) == 19  # int(0.2 * 99), as the book
    assert resolve_warmup(100, warmup_ratio=0.1) == 10
    assert resolve_warmup(100, warmup_steps=7) == 7
    with pytest.raises(ValueError, match="warmup_steps"):
        resolve_warmup(10, warmup_steps=11)
    with pytest.raises(ValueError, match="warmup_ratio"):
        resolve_warmup(10, warmup_ratio=1.5)


def test_schedule_validation():
    with pytest.raises(ValueError, match="unknown schedule"):
        LRSchedule("linear", total_steps=10)
    with pytest.raises(ValueError, match="peak_lr"):
        LRSchedule("cosine", total_steps=10, peak_lr=0.0)


def _optimizer() -> torch.optim.Optimizer:
    model = torch.nn.Linear(3, 2)
    # Deliberately built without lr=, like the book's appendix-D listing (AdamW default 1e-3).
    return torch.optim.AdamW(model.parameters(), weight_decay=0.1)


def test_scheduler_drives_optimizer_lr_from_peak():
    schedule = LRSchedule("cosine", TOTAL, WARMUP, peak_lr=5e-4, initial_lr=INITIAL, min_lr=MIN)
    optimizer = _optimizer()
    scheduler = build_scheduler(optimizer, schedule)
    seen = []
    for _ in range(TOTAL):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [warmup_cosine_lr(s, TOTAL, WARMUP, 5e-4, INITIAL, MIN) for s in range(TOTAL)]
    assert seen == pytest.approx(expected, rel=1e-12)
    # The peak is the schedule's, not AdamW's default 1e-3.
    assert max(seen) == pytest.approx(5e-4, rel=1e-12)


def test_scheduler_state_dict_round_trip(tmp_path):
    schedule = LRSchedule("cosine", TOTAL, WARMUP, peak_lr=PEAK, initial_lr=INITIAL, min_lr=MIN)
    optimizer = _optimizer()
    scheduler = build_scheduler(optimizer, schedule)
    for _ in range(37):
        optimizer.step()
        scheduler.step()
    torch.save(scheduler.state_dict(), tmp_path / "scheduler.bin")
    state = torch.load(tmp_path / "scheduler.bin", weights_only=True)
    # The factor object's fields are in the state dict, so a resumed run keeps the same schedule.
    assert state["lr_lambdas"][0]["total_steps"] == TOTAL
    assert state["last_epoch"] == 37

    # Resume into a scheduler built with a different (wrong) schedule: loading must restore everything.
    optimizer2 = _optimizer()
    scheduler2 = build_scheduler(optimizer2, LRSchedule("constant", total_steps=5, peak_lr=PEAK))
    scheduler2.load_state_dict(state)
    assert scheduler2.lr_lambdas[0] == schedule
    assert scheduler2.last_epoch == 37
    for step in range(37, 45):
        optimizer2.step()
        scheduler2.step()
        assert optimizer2.param_groups[0]["lr"] == pytest.approx(lr(step + 1), rel=1e-12)


def test_should_clip_boundary():
    assert not should_clip(WARMUP - 1, WARMUP)
    assert should_clip(WARMUP, WARMUP)  # the book's `>` would skip this step
    assert should_clip(WARMUP + 1, WARMUP)
    assert should_clip(0, WARMUP, "always")
    assert not should_clip(10_000, WARMUP, "never")
    assert should_clip(0, 0)
    with pytest.raises(ValueError, match="unknown clip mode"):
        should_clip(0, 0, "sometimes")
