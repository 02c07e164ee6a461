"""Build the tiny terminal-agent checkpoint: ``python tools/warmstart.py configs/tiny.yaml``.

A thin command-line wrapper; the logic is ``pipeline/warmstart.py``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.warmstart import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
