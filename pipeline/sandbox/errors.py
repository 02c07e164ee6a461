"""The sandbox package's error, in a module of its own so that every module of the package
(the config and interface in ``base.py``, the rules in ``boundary.py``) can raise it
without importing the others."""


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the command): the episode is an infrastructure error."""
