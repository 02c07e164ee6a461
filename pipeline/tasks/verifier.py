"""The verifier: after the agent, the task's tests decide the reward — on ground the agent
cannot have prepared.

Where it sits: rollout (the agent finished) → **verify(task, sandbox, backend, cfg)** →
Verdict (reward, named rewards, who is to blame for a failure) → Trajectory.reward.

What the harness guarantees, whatever the agent did before (Harbor's and Terminal-Bench's
own harnesses guarantee none of it; their run semantics are kept otherwise). What of the
agent's world the verifier sees is decided in one place, ``pipeline/sandbox/boundary.py``:

- ``cfg.verifier_isolation: separate`` (the default): the tests run in
  ``backend.verifier_sandbox(box)``: on docker a new container of the task's image in the
  agent container's network namespace (services the agent started stay reachable), with
  the agent's files copied in by the boundary's rules (no processes, no scratch dirs, no
  toolchain of the agent's); on bwrap the agent's own sandbox (nothing of the agent runs
  between commands, ``/tmp`` is per command).
- Before the tests are laid, ``Sandbox.cleanup_sweep`` removes links into the verifier's
  ground and special files; then ``/tests`` and ``/logs/verifier`` are removed as the agent
  left them and laid anew, root's, ``/tests`` mode 0700 (``Sandbox.prepare_verifier``);
  the tests are copied in only then.
- The verifier runs as root with a clean process environment: system directories first
  on ``PATH``, ``PYTHONNOUSERSITE=1``, ``PYTHONSAFEPATH=1`` (``python -c``/``-m`` in the agent's
  work dir do not import what it planted there), a fresh ``HOME``, none of ``UNSAFE_ENV``,
  ``TEST_DIR=/tests``, the task's ``[verifier] env``, and ``ECHO_RL_AGENT_UID``: the uid
  (never root) as which a check runs the agent's code. A root agent's processes are
  killed before a verifier that shares its sandbox (``same``), except under
  ``cfg.profile: harbor`` (Harbor's semantics, for evaluation only).
- The reward file is read without following links, must be a regular file of at most
  64 KiB and hold what its format allows: ``reward.json`` an object of name → finite
  number (the training reward is ``cfg.reward_key``, or the mean when that key is absent),
  else ``reward.txt`` one finite number. Terminal-Bench 1 tasks are decided like TB's
  pytest parser: every test of pytest's "short test summary info" PASSED, SKIPPED or XFAIL.
- Blame: when the verifier fails (no/malformed reward, timeout, the sandbox broke under
  it), the same verifier runs once more on a fresh sandbox of the task where no agent
  acted. If it works there, the agent's changes caused the failure: reward 0,
  ``failure="agent"``. If it fails there too, it is the infrastructure's (or the task's):
  ``VerifierError``, and the episode is an ``infra_error``.
- Network: the verifier phase has the network ``cfg.verifier_network`` gives it
  (``phase_networks``). Offline, a verifier that fails or scores 0 while its output reads
  as a network error (an install step: curl, pip, uv) is re-run where no agent acted; if
  that shows the same, the episode is an infrastructure error "verifier needs the
  network: ...", never reward 0 (and the agent cannot buy that by printing the words).
- ``cfg.verifier_isolation: fresh`` verifies in a new sandbox of the task's image into
  which only the agent's work tree is copied, with its own network (for tasks whose
  checks read only files); ``same`` in the agent's own sandbox (Harbor's semantics).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from dataclasses import dataclass, field

from pipeline.sandbox.base import SandboxBackend, SandboxConfig, SandboxError, phase_networks
from pipeline.tasks.base import Task, VerifierError

REWARD_JSON, REWARD_TXT = "/logs/verifier/reward.json", "/logs/verifier/reward.txt"
REWARD_FILE = REWARD_TXT  # the one the generated families write
TEST_STDOUT = "/logs/verifier/test-stdout.txt"
MAX_REWARD_BYTES = 1 << 16
MAX_STDOUT_BYTES = 8 << 20
PYTEST_OK = ("PASSED", "SKIPPED", "XFAIL")
# What an install step that needs the network prints when it has none (curl, pip, uv, apt,
# git, wget, python's socket errors).
_OFFLINE = re.compile(
    r"Could not resolve host|Temporary failure in name resolution|Name or service not known|"
    r"Network is unreachable|No route to host|Failed to establish a new connection|"
    r"Could not fetch URL|Failed to fetch https?://|unable to access 'https?://|"
    r"getaddrinfo failed|Failed to resolve|dns error|verifier needs the network")


class NetworkNeeded(VerifierError):
    """The verifier ran offline and failed or scored 0 on what reads as a network error."""


def offline_sign(output: str) -> str:
    """The first line of ``output`` that reads as an install step failing offline, or ""."""
    for line in output.splitlines():
        if _OFFLINE.search(line):
            return line.strip()[:200]
    return ""


@dataclass
class Verdict:
    reward: float  # the training reward
    rewards: dict[str, float] = field(default_factory=dict)  # every named reward the verifier wrote
    failure: str = ""  # "agent": the agent's changes made the verifier fail (reward 0)
    detail: str = ""  # why it failed
    seconds: float = 0.0
    verifier_tail: str = ""  # the last lines the tests printed (why a task fails: `tasks check`)
    reward_file: str = ""  # what the reward file held, as read


def parse_reward_txt(raw: bytes) -> float:
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        value = float(text)
    except ValueError:
        raise VerifierError(f"reward.txt holds {text[:60]!r}, not one number") from None
    if not math.isfinite(value):
        raise VerifierError(f"reward.txt holds {value}, not a finite number")
    return value


def parse_reward_json(raw: bytes) -> dict[str, float]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise VerifierError(f"reward.json is not JSON: {e}") from None
    if not isinstance(obj, dict) or not obj:
        raise VerifierError(f"reward.json must be a non-empty object of name → number, got {str(obj)[:60]}")
    bad = {k: v for k, v in obj.items() if isinstance(v, bool) or not isinstance(v, (int, float))
           or not math.isfinite(v)}  # fmt: skip
    if bad:
        raise VerifierError(f"reward.json: {sorted(bad)[:3]} are not finite numbers")
    return {str(k): float(v) for k, v in obj.items()}


def rewards_from_json(raw: bytes, reward_key: str = "reward") -> dict[str, float]:
    """The named rewards of a ``reward.json``, with ``reward_key`` (the training reward) the
    mean of the others where the verifier did not write it."""
    rewards = parse_reward_json(raw)
    if reward_key not in rewards:
        rewards[reward_key] = sum(rewards.values()) / len(rewards)
    return rewards


_SUMMARY = re.compile(r"^=+ short test summary info =+\s*$", re.M)
_STATUS = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def parse_pytest(output: str) -> float:
    """Terminal-Bench 1's pytest parser: 1 when every test listed in the last "short test
    summary info" (pytest -rA) is PASSED, SKIPPED or XFAIL; no summary is a parse error."""
    found = list(_SUMMARY.finditer(output))
    if not found:
        raise VerifierError("the tests printed no pytest 'short test summary info' (run pytest with -rA)")
    statuses = []
    for line in output[found[-1].end():].splitlines():
        if line.startswith("="):
            break
        m = _STATUS.match(line)
        if m:
            statuses.append(m.group(1))
    if not statuses:
        raise VerifierError("pytest's short test summary lists no test")
    return 1.0 if all(s in PYTEST_OK for s in statuses) else 0.0


# pytest's final line: "==== 1 passed in 0.01s ====" (default, -v) or, under -q, the same
# without the rules ("1 passed, 1 warning in 0.01s"); the time may be followed by "(0:01:02)"
_FINAL = re.compile(r"^(?:=+ )?(?:\d+ (?:passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?|rerun)"
                    r"(?:, )?)+ in [\d.]+s\b.*$", re.M)


def pytest_reward(output: str, exit_code: int | None) -> float:
    """``parse_pytest``, and 0 when the run contradicts its summary: the tests ended by a
    signal or a timeout (exit ≥ 128 or none), exited non-zero under an all-pass summary, or
    printed no final ``N passed in Xs`` line after it (with or without pytest's ``===`` rules) (a summary forged, then pytest killed)."""
    score = parse_pytest(output)
    if score > 0:
        last = list(_SUMMARY.finditer(output))[-1].end()
        if exit_code is None or exit_code != 0 or not _FINAL.search(output, last):
            return 0.0
    return score


def run_tests(task: Task, box, *, reward_key: str = "reward", offline: bool = False, stop_root_agent: bool = True,
              report: dict | None = None) -> dict[str, float]:
    """Lay the verifier's ground, copy the tests in, run them as the verifier, read the
    reward. Returns the named rewards (``reward_key`` → the training reward). Raises
    ``VerifierError`` (or ``SandboxError``) when no valid reward comes out; with
    ``offline`` (the verifier phase had no network), ``NetworkNeeded`` when it failed or
    scored 0 and its output reads as a network error (``verify`` decides whose)."""
    try:
        rewards = _run_tests(task, box, reward_key, stop_root_agent)
    except VerifierError as e:
        _report(box, report)
        if offline and (sign := offline_sign(str(e)) or offline_sign(_stdout(box))):
            raise NetworkNeeded(f"verifier needs the network: {sign}") from e
        raise
    _report(box, report)
    if offline and rewards[reward_key] <= 0 and (sign := offline_sign(_stdout(box))):
        raise NetworkNeeded(f"verifier needs the network: {sign} (it scored {rewards[reward_key]:g} offline)")
    return rewards


def _report(box, report: dict | None, lines: int = 20) -> None:
    """The tests' last output lines and the reward file's content, for ``Verdict``."""
    if report is None:
        return
    try:
        report["verifier_tail"] = "\n".join(_stdout(box).splitlines()[-lines:])
        raw = box.read_file(REWARD_JSON, max_bytes=MAX_REWARD_BYTES) or box.read_file(REWARD_TXT, max_bytes=MAX_REWARD_BYTES)
        report["reward_file"] = (raw or b"").decode(errors="replace")[:500]
    except Exception as e:  # noqa: BLE001 (a report never fails the verdict)
        report["verifier_tail"] = f"(could not read the verifier's output: {e})"


def _stdout(box) -> str:
    return (box.read_file(TEST_STDOUT, max_bytes=MAX_STDOUT_BYTES) or b"")[-(1 << 16):].decode(errors="replace")


def _run_tests(task: Task, box, reward_key: str, stop_root_agent: bool = True) -> dict[str, float]:
    box.prepare_verifier(stop_agent=box.agent_uid is None and stop_root_agent)
    box.cleanup_sweep()  # (boundary.py) before the ground holds anything a link could reach
    box.put_files(task.tests, mode=0o755)
    env = {"TEST_DIR": "/tests", **task.verifier_env}
    if box.check_uid is not None:
        env["ECHO_RL_AGENT_UID"] = str(box.check_uid)  # checks that run the agent's code run it as this uid
    command = task.test_command.strip()
    if command:  # (the maze's verifier has no command: its reward is the goal)
        command = f"{command} > {TEST_STDOUT} 2>&1"
    result = box.exec(command, timeout_s=task.verifier_timeout_s, verifier=True, env=env)
    if result.timed_out:
        raise VerifierError(f"verifier timed out after {task.verifier_timeout_s:g} s")
    if task.reward_from == "exit_code":
        return {reward_key: 1.0 if result.exit_code == 0 else 0.0}
    if task.reward_from == "pytest":
        out = box.read_file(TEST_STDOUT, max_bytes=MAX_STDOUT_BYTES)
        if out is None:
            raise VerifierError(f"the verifier's output {TEST_STDOUT} is missing, not a file or over 8 MiB")
        return {reward_key: pytest_reward(out.decode("utf-8", errors="replace"), result.exit_code)}
    raw = box.read_file(REWARD_JSON, max_bytes=MAX_REWARD_BYTES)
    if raw is not None:
        return rewards_from_json(raw, reward_key)
    raw = box.read_file(REWARD_TXT, max_bytes=MAX_REWARD_BYTES)
    if raw is None:
        tail = (box.read_file(TEST_STDOUT, max_bytes=MAX_STDOUT_BYTES) or b"")[-500:]
        raise VerifierError(f"verifier wrote no {REWARD_JSON} or {REWARD_TXT} (a regular file ≤ 64 KiB; "
                            f"exit {result.exit_code}): {tail.decode(errors='replace')}")  # fmt: skip
    return {reward_key: parse_reward_txt(raw)}


def verify(task: Task, box, backend: SandboxBackend, cfg: SandboxConfig, *, episode: str = "") -> Verdict:
    """The reward of an episode whose agent phase ended in ``box`` (see the module doc)."""
    t0 = time.perf_counter()
    key = cfg.reward_key
    # offline, unless the task's image was prepared (its oracle passed offline in it): then
    # what its install steps print offline is noise, and a 0 is the agent's 0
    offline = phase_networks(cfg, task)[1] == "none" and not getattr(box, "prepared", False)
    report: dict = {}
    kw = {"reward_key": key, "offline": offline, "stop_root_agent": cfg.profile != "harbor", "report": report}
    try:
        if cfg.verifier_isolation == "fresh":
            with backend.start(task_dir=task.task_dir, task=task, episode=f"{episode}-verify") as clean:
                box.copy_workdir_to(clean)
                rewards = run_tests(task, clean, **kw)
        else:
            with backend.verifier_sandbox(box, task, episode=episode) if cfg.verifier_isolation == "separate" \
                    else contextlib.nullcontext(box) as vbox:  # fmt: skip
                rewards = run_tests(task, vbox, **kw)
        return Verdict(rewards[key], rewards, seconds=time.perf_counter() - t0, **report)
    except (VerifierError, SandboxError) as e:  # incl. NetworkNeeded: the task's or the agent's doing?
        first = f"{type(e).__name__}: {e}"
    try:  # is it the agent's doing? The same verifier where no agent acted.
        with backend.start(task_dir=task.task_dir, task=task, episode=f"{episode}-blame") as clean:
            run_tests(task, clean, reward_key=key, offline=offline)
    except NetworkNeeded as e:  # it needs the network wherever it runs: the task's, never reward 0
        raise NetworkNeeded(f"{task.task_id}: {e} (set sandbox.verifier_network=task on a backend with a "
                            "network, or give the image its test tools)") from e  # fmt: skip
    except (VerifierError, SandboxError) as e:
        raise VerifierError(f"{task.task_id}: {first}; on a fresh sandbox too: {type(e).__name__}: {e}") from e
    # Where no agent acted the verifier works (or prints no network error): what failed was the agent's doing.
    return Verdict(0.0, {}, failure="agent", detail=first[:2000], seconds=time.perf_counter() - t0, **report)


def run_verifier(task: Task, box, *, reward_key: str = "reward") -> float:
    """The training reward of ``run_tests`` (no blame check: failures raise)."""
    return run_tests(task, box, reward_key=reward_key)[reward_key]
