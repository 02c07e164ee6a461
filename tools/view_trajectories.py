"""Trajectory viewer: ``python tools/view_trajectories.py FILE.jsonl [--html OUT] [--loss-weights]``.

A thin command-line wrapper; the logic is ``pipeline/viewer.py`` (also ``echo-rl view``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.viewer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
