"""The book's own code, copied from its listings: an implementation that shares nothing with gptlite.

Tests and benchmarks compare gptlite against it (logits, losses, samples, wall time), so it lives apart from both
the package (it is not shipped: pyproject packages ``gptlite*`` only) and the tests (benchmarks must not import them).

- :mod:`reference.book_gpt`: chapter 4's ``GPTModel`` and ``generate_text_simple``.
- :mod:`reference.book_loop`: chapter 2's ``GPTDatasetV1`` and chapter 5's / appendix D's training loops.
"""
