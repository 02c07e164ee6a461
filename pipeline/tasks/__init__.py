"""Task sets: Harbor / Terminal-Bench task directories and built-in generated families."""

from pipeline.tasks.base import Task, TaskFormatError, VerifierError, run_verifier
from pipeline.tasks.formats import load_harbor, load_task, load_task_set, load_terminal_bench

__all__ = ["Task", "TaskFormatError", "VerifierError", "run_verifier", "load_harbor", "load_task",
           "load_task_set", "load_terminal_bench"]  # fmt: skip
