"""How the tests share the machine's cores (tests/conftest.py's hooks call these).

The tests' models are tiny: one torch thread computes them faster than two that wait for each other (the quick suite
measured 1.2-1.7x faster, the more so on a busy machine), and one count for all of them keeps a module's shared
reference run and the runs compared with it (child processes get OMP_NUM_THREADS=1) on the same float sums. The
tests marked ``all_cores`` (the book's 124M replays, the main job) compute as a user's run does, on every core,
and alone: under pytest-xdist (``-n``) the other workers start no test while one of them runs. On 2 cores the full
suite took 29.5 min without ``-n``, 31 min with ``-n 2`` and the book's replays beside other tests (their threads
wait for each other at every matmul while a core is taken; chapter 5's took 950 s instead of ~350 s), and 24.4 min
with ``-n 2`` and this lock.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import torch

THREADS = torch.get_num_threads()
_LOCKS = "GPTLITE_TESTS_LOCKS"  # the folder of this run's two lock files, made by the controller for its workers


def wants_all_cores(item: pytest.Item) -> bool:
    return item.get_closest_marker("all_cores") is not None


def set_threads(item: pytest.Item) -> None:
    torch.set_num_threads(THREADS if wants_all_cores(item) else 1)


def put_first(items: list[pytest.Item]) -> None:
    """The files of the all_cores tests first: with ``-n``, whole files go to the workers in this order
    (``--dist loadfile --no-loadscope-reorder``), so the longest runs start at once instead of at the end."""
    longest = {item.path for item in items if wants_all_cores(item)}
    items.sort(key=lambda item: item.path not in longest)


def make_locks(config: pytest.Config) -> None:
    """On the controller of a ``-n`` run: the folder of the lock files its workers share (they inherit the
    environment), removed when the run ends."""
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):
        return
    folder = tempfile.mkdtemp(prefix="gptlite-tests-")
    os.environ[_LOCKS] = folder
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


@contextmanager
def share_of_the_machine(item: pytest.Item) -> Iterator[None]:
    """Held around one test on a ``-n`` worker: shared for an ordinary test, exclusive for an all_cores one.

    A readers-writer lock with a turnstile: an all_cores test holds the turnstile while it waits for the running
    tests to end, so no other worker starts one meanwhile (else it could wait for the rest of the suite)."""
    folder = os.environ.get(_LOCKS)
    if folder is None:  # not under -n: one test at a time anyway
        yield
        return
    with ExitStack() as held:
        turnstile = held.enter_context(open(Path(folder) / "turnstile", "a"))
        cores = held.enter_context(open(Path(folder) / "cores", "a"))
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(cores, fcntl.LOCK_EX if wants_all_cores(item) else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        yield  # closing the files releases the lock
