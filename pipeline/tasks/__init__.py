"""Task sets: Harbor / Terminal-Bench task directories and built-in generated families."""

from pipeline.tasks.base import Task, TaskFormatError, VerifierError
from pipeline.tasks.formats import load_harbor, load_task, load_task_set, load_terminal_bench
from pipeline.tasks.verifier import Verdict, run_verifier, verify

__all__ = ["Task", "TaskFormatError", "VerifierError", "Verdict", "run_verifier", "verify", "load_harbor",
           "load_task", "load_task_set", "load_terminal_bench"]  # fmt: skip
