"""Checking a task set before training on it: ``echo-rl tasks check`` (the oracle run, as
Harbor's ``harbor run -a oracle`` / ``-a nop``) and ``echo-rl tasks audit`` (the generic
reward attacks of ``pipeline/tasks/attacks.py``).

Where it sits: a dataset on disk → **check / audit** (sandbox backend + verifier, no model)
→ a table and JSON; exit 1 when a task fails.

    echo-rl tasks check DIR... [--backend docker] [--jobs N] [--json OUT] [key=value ...]
    echo-rl tasks audit DIR... [--backend docker] [--jobs N] [--json OUT] [--attacks a,b]

Per task, ``check``: load, build (the first sandbox), no-op → reward 0, the reference
solution (``solution/`` copied to ``/solution``, run as the agent with
``DEBIAN_FRONTEND=noninteractive`` and ``[solution] env``, output to
``/logs/agent/oracle.txt``) → reward 1. ``audit``: each attack as the agent's only
command; it got through when it scores above the no-op or ends in an infrastructure error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.sandbox.base import SandboxBackend, SandboxConfig, SandboxError
from pipeline.tasks.base import Task, TaskFormatError, VerifierError
from pipeline.tasks.verifier import verify


def _episode(task: Task, backend: SandboxBackend, cfg: SandboxConfig, command: str, *, oracle: bool = False,
             why: dict | None = None):
    """One agent phase (``command`` as the agent, "" = nothing) and the verdict; ``why``
    gets the oracle's last output lines (``oracle_tail``)."""
    with backend.start(task=task, episode="check") as box:
        if command:
            env = {"DEBIAN_FRONTEND": "noninteractive", **task.solution_env} if oracle else None
            if oracle:
                box.put_files(task.solution_files, mode=0o755)
                command = f"{command} > /logs/agent/oracle.txt 2>&1"
            try:
                box.exec(command, timeout_s=task.agent_timeout_s if oracle else cfg.timeout_s, env=env)
            except SandboxError:
                if not box.alive():  # as in the agent loop: a live sandbox that cannot run commands
                    raise  # is the agent's doing, and goes to the verifier
            if oracle and why is not None:
                tail = box.read_file("/logs/agent/oracle.txt", max_bytes=8 << 20) or b""
                why["oracle_tail"] = "\n".join(tail.decode(errors="replace").splitlines()[-TAIL_LINES:])

        return verify(task, box, backend, cfg, episode="check")


TAIL_LINES = 20
# Settings a failing task is tried under again, in order, for the hint (docker only).
ALTERNATIVES = ({"agent_user": "root"}, {"profile": "harbor"})


def _hint(task: Task, cfg: SandboxConfig) -> str:
    """The first other setting under which the reference solution passes, as a hint."""
    import dataclasses

    from pipeline.sandbox import make_backend

    for change in ALTERNATIVES:
        if all(getattr(cfg, k) == v for k, v in change.items()) or cfg.backend != "docker":
            continue
        other = dataclasses.replace(cfg, **change)
        try:
            if _episode(task, make_backend(other), other, task.solution_command, oracle=True).reward == 1:
                keys = " ".join(f"sandbox.{k}={v}" for k, v in change.items())
                return f"it passes with {keys}" + (" (Harbor's semantics: see the README for what that profile "
                                                   "lets through)" if "profile" in change else "")  # fmt: skip
        except (SandboxError, VerifierError):
            continue
    return ""


def check_task(path: Path, backend: SandboxBackend, cfg: SandboxConfig) -> dict:
    row = {"task": path.name, "path": str(path), "status": "fail", "cause": "", "noop": None, "oracle": None}
    t0 = time.perf_counter()
    try:
        from pipeline.tasks.formats import load_task

        task = load_task(path)
        row["task"] = task.task_id
        if not task.solution_command:
            row["cause"] = "no reference solution"
            return row
        noop = _episode(task, backend, cfg, "")
        row["build_and_noop_s"] = round(time.perf_counter() - t0, 2)
        t1 = time.perf_counter()
        why: dict = {}
        oracle = _episode(task, backend, cfg, task.solution_command, oracle=True, why=why)
        row["oracle_s"] = round(time.perf_counter() - t1, 2)
        row.update(noop=noop.reward, oracle=oracle.reward, rewards=oracle.rewards)
        row.update(verifier_tail=oracle.verifier_tail, reward_file=oracle.reward_file, **why)
        if oracle.failure:
            row["cause"] = f"the reference solution broke the verifier: {oracle.detail[:200]}"
        elif noop.reward != 0:
            row["cause"] = f"doing nothing scores {noop.reward:g}"
        elif oracle.reward != 1:
            row["cause"] = f"the reference solution scores {oracle.reward:g}"
            if cfg.backend == "bwrap" and ("nohup" in task.solution or "&\n" in task.solution or task.solution.rstrip().endswith("&")):
                row["cause"] += (" (it starts a background process: bwrap kills what a command leaves running; "
                                 "tasks that check a service the agent started need sandbox.backend=docker)")
        else:
            row["status"] = "pass"
        if row["status"] != "pass" and oracle.reward != 1 and (hint := _hint(task, cfg)):
            row["hint"] = hint
    except (TaskFormatError, SandboxError, VerifierError, OSError) as e:
        row["cause"] = f"{type(e).__name__}: {e}"[:400]
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def why_line(row: dict) -> str:
    """One console line saying why a task failed: the hint, the verifier's last line, the
    reward file, the oracle's last line."""
    last = lambda text: (text or "").strip().splitlines()[-1][:160] if (text or "").strip() else ""  # noqa: E731
    parts = [f"hint: {row['hint']}"] if row.get("hint") else []
    parts += [f"{name}: {v!r}" for name, v in (("verifier said", last(row.get("verifier_tail"))),
                                                ("reward file", (row.get("reward_file") or "").strip()[:60]),
                                                ("oracle said", last(row.get("oracle_tail")))) if v]  # fmt: skip
    return "    why: " + "; ".join(parts) if parts else ""


def audit_task(path: Path, backend: SandboxBackend, cfg: SandboxConfig, attacks) -> dict:
    from pipeline.tasks.formats import load_task

    row = {"task": path.name, "path": str(path), "status": "fail", "cause": "", "got_through": [], "attacks": {}}
    t0 = time.perf_counter()
    try:
        task = load_task(path)
        row["task"] = task.task_id
        noop = _episode(task, backend, cfg, "").reward
        row["noop"] = noop
        for a in attacks:
            try:
                v = _episode(task, backend, cfg, a.command)
                row["attacks"][a.name] = {"reward": v.reward, "failure": v.failure}
                if v.reward > noop:
                    row["got_through"].append(a.name)
            except (SandboxError, VerifierError) as e:  # an escape to infra_error
                row["attacks"][a.name] = {"reward": None, "infra_error": str(e)[:300]}
                row["got_through"].append(a.name)
        row["status"] = "fail" if row["got_through"] else "pass"
        row["cause"] = ", ".join(row["got_through"])
    except (TaskFormatError, SandboxError, VerifierError, OSError) as e:
        row["cause"] = f"{type(e).__name__}: {e}"[:400]
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def main(argv: list[str]) -> int:
    from tqdm import tqdm

    from pipeline.config import ConfigError, load_config
    from pipeline.sandbox import make_backend
    from pipeline.tasks.attacks import ATTACKS, BY_NAME
    from pipeline.tasks.formats import task_dirs_in

    p = argparse.ArgumentParser(prog=f"echo-rl tasks {argv[0] if argv else ''}")
    p.add_argument("dirs", nargs="+", help="task dirs or datasets (dirs of task dirs, nested one level)")
    p.add_argument("--backend", default=None, help="bwrap or docker (default: the config's)")
    p.add_argument("--config", default=None, help="YAML recipe whose sandbox section to use")
    p.add_argument("--jobs", type=int, default=1, help="tasks checked at once")
    p.add_argument("--json", default=None, help="write the per-task results here")
    p.add_argument("--attacks", default="all", help="audit: comma-separated attack names, or all")
    command, rest = argv[0], argv[1:]
    overrides = [a for a in rest if "=" in a and not a.startswith("-") and not Path(a).exists()]
    a = p.parse_args([x for x in rest if x not in overrides])
    try:
        cfg = load_config(a.config, overrides + ([f"sandbox.backend={a.backend}"] if a.backend else [])).sandbox
        backend = make_backend(cfg)
    except (ConfigError, SandboxError) as e:
        print(f"echo-rl: {e}", file=sys.stderr)
        return 2
    paths = task_dirs_in(a.dirs)
    if not paths:
        print(f"echo-rl: no task directories in {a.dirs}", file=sys.stderr)
        return 2
    if command == "audit":
        names = [x.name for x in ATTACKS] if a.attacks == "all" else a.attacks.split(",")
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            print(f"echo-rl: unknown attacks {unknown}; known: {sorted(BY_NAME)}", file=sys.stderr)
            return 2
        one = lambda path: audit_task(path, backend, cfg, [BY_NAME[n] for n in names])  # noqa: E731
    else:
        one = lambda path: check_task(path, backend, cfg)  # noqa: E731
    t0 = time.perf_counter()
    bar = tqdm(total=len(paths), desc=f"tasks {command}", unit="task", leave=False)

    def run(path):
        row = one(path)
        bar.update(1)
        return row

    with ThreadPoolExecutor(max_workers=max(a.jobs, 1)) as pool:
        rows = list(pool.map(run, paths))
    bar.close()
    wall = time.perf_counter() - t0
    width = max(len(r["task"]) for r in rows)
    for r in rows:
        extra = f"noop {r.get('noop')}  oracle {r.get('oracle')}" if command == "check" else f"noop {r.get('noop')}"
        print(f"{r['task']:<{width}}  {r['status'].upper():<4}  {r['seconds']:6.1f}s  {extra}  {r['cause']}")
        if r["status"] != "pass" and command == "check" and (line := why_line(r)):
            print(line)
    failed = sum(r["status"] != "pass" for r in rows)
    print(f"{len(rows) - failed}/{len(rows)} passed in {wall:.1f} s ({len(rows) / wall * 60:.1f} tasks/min, "
          f"--jobs {a.jobs}, {cfg.backend})")  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps({"command": command, "backend": cfg.backend, "jobs": a.jobs,
                                            "wall_s": wall, "tasks": rows}, indent=1))  # fmt: skip
    return 1 if failed else 0
