"""``python -m gptlite.training`` is ``gptlite-train``, so ``accelerate launch -m gptlite.training ...`` works."""

from gptlite.training.cli import main

if __name__ == "__main__":
    main()
