"""The test suite, a package: test modules import shared helpers as ``tests.<folder>.conftest`` (one per folder)."""
