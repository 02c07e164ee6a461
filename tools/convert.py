"""Checkpoint export/import: ``python tools/convert.py ...`` or ``echo-rl convert ...``.

A thin command-line wrapper; the logic is ``pipeline/weights/convert.py``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.weights.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
