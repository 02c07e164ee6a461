"""Task directory formats: Harbor and Terminal-Bench 1, read as their own harnesses read them.

Harbor (``src/harbor/models/task/config.py``, ``verifier/verifier.py``, ``agents/oracle.py``)::

    instruction.md              what the agent is told
    task.toml                   every field optional (below); unknown fields are kept
    environment/Dockerfile      the image, environment/ is the build context
      or environment/docker-compose.yaml (service ``main``), or [environment] docker_image
    tests/test.sh               run as ``bash /tests/test.sh``; writes /logs/verifier/reward.json
                                (name → number) or reward.txt (one number); its exit code is not the reward
    solution/solve.sh           the oracle: solution/ is copied to /solution

``task.toml``: ``[agent] timeout_sec`` (Harbor: none = no limit; here 3600 s, a finite
default), ``user``; ``[verifier] timeout_sec`` (600), ``env``; ``[solution] env``;
``[environment] build_timeout_sec`` (600), ``docker_image``, ``cpus``, ``memory_mb`` /
legacy ``memory = "2G"``, ``storage_mb`` / ``storage``, ``gpus``, ``allow_internet``
(true) and its successor ``network_mode`` (public / no-network / allowlist +
``allowed_hosts``), ``workdir``, ``env``. ``${VAR:-default}`` in env tables is resolved on
the host.

Terminal-Bench 1 (``terminal_bench/handlers/trial_handler.py``, ``parsers/pytest_parser.py``)::

    task.yaml                   instruction, max_agent_timeout_sec (360), max_test_timeout_sec (60),
                                parser_name (pytest), run_tests_in_same_shell
    Dockerfile | docker-compose.yaml (service ``client``)
    run-tests.sh, tests/*       copied flat into /tests; TEST_DIR=/tests
    solution.sh | solution.yaml the oracle

The result is pytest's "short test summary info" (every test PASSED/SKIPPED/XFAIL), not the
exit code. TB's harness also copies its own ``setup-uv-pytest.sh`` / ``run-uv-pytest.sh``
into /tests (they install uv and pytest from the internet); here offline stand-ins with
the same effect take their place, also over the copies a distributed task ships (``pytest``
must be in the image: the stand-in images of ``tools/podman_setup.sh`` and the bwrap rootfs
have it).
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from pathlib import Path

import yaml

from pipeline.tasks.base import Service, Task, TaskFormatError, read_tree

AGENT_TIMEOUT_DEFAULT_S = 3600.0  # Harbor's default is no limit; an RL episode needs one

# Terminal-Bench's own helper scripts, offline: pytest comes from the image, not from uv.
TB_SETUP_UV_PYTEST = b"""#!/bin/bash
# echo-rl stand-in for Terminal-Bench's setup-uv-pytest.sh (which installs uv and pytest
# from the internet): offline, pytest must already be in the image.
python3 -c 'import pytest' 2>/dev/null || { echo "verifier needs the network: pytest is not installed in the image"; exit 1; }
uv() { if [ "$1" = add ] || [ "$1" = pip ]; then echo "echo-rl: offline, skipping: uv $*"; else command uv "$@"; fi; }
"""
TB_RUN_UV_PYTEST = b"""#!/bin/bash
# echo-rl stand-in for Terminal-Bench's run-uv-pytest.sh (-P: the work dir, the agent's,
# is not put first on sys.path, so a planted /app/pytest.py is not what runs)
python3 -P -m pytest --confcutdir="$TEST_DIR" "$TEST_DIR/test_outputs.py" -rA
"""


def _need(path: Path) -> Path:
    if not path.is_file():
        raise TaskFormatError(f"{path.parent}: missing {path.name}")
    return path


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _env_table(value, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TaskFormatError(f"{where}: must be a table of NAME = value, got {value!r}")
    return {str(k): _VAR.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), str(v)) for k, v in value.items()}


def _number(table: dict, key: str, where: str, default, kind=float):
    v = table.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise TaskFormatError(f"{where}.{key}: must be a non-negative number, got {v!r}")
    return kind(v)


def _size_mb(text, where: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(text), re.I)
    if not m:
        raise TaskFormatError(f"{where}: a size like '2G' or '512M', got {text!r}")
    scale = {"": 1 / (1 << 20), "K": 1 / 1024, "M": 1, "G": 1024, "T": 1 << 20}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


def _table(meta: dict, name: str, path: Path) -> dict:
    t = meta.get(name, {})
    if not isinstance(t, dict):
        raise TaskFormatError(f"{path}: [{name}] must be a table")
    return t


def load_harbor(task_dir: str | Path) -> Task:
    d = Path(task_dir)
    instruction = _need(d / "instruction.md").read_text()
    path = d / "task.toml"
    try:
        meta = tomllib.loads(_need(path).read_text())
    except tomllib.TOMLDecodeError as e:
        raise TaskFormatError(f"{path}: {e}") from e
    agent, verifier, env = (_table(meta, n, path) for n in ("agent", "verifier", "environment"))
    solution, metadata = _table(meta, "solution", path), _table(meta, "metadata", path)
    where = str(path)
    _need(d / "tests" / "test.sh")
    memory = _number(env, "memory_mb", f"{where} [environment]", None, int)
    if memory is None and "memory" in env:
        memory = _size_mb(env["memory"], f"{where} [environment].memory")
    storage = _number(env, "storage_mb", f"{where} [environment]", None, int)
    if storage is None and "storage" in env:
        storage = _size_mb(env["storage"], f"{where} [environment].storage")
    network = env.get("network_mode")
    if network is None:
        allow = env.get("allow_internet", True)
        if not isinstance(allow, bool):
            raise TaskFormatError(f"{where} [environment].allow_internet: must be true or false, got {allow!r}")
        network = "public" if allow else "no-network"
    if network not in ("public", "no-network", "allowlist"):
        raise TaskFormatError(f"{where} [environment].network_mode: public, no-network or allowlist, got {network!r}")
    image = env.get("docker_image") or ""
    compose = d / "environment" / "docker-compose.yaml"
    dockerfile = d / "environment" / "Dockerfile"
    sol_dir = d / "solution"
    known = {"agent": {"timeout_sec", "user"}, "verifier": {"timeout_sec", "env"}, "solution": {"env"},
             "environment": {"build_timeout_sec", "docker_image", "cpus", "memory_mb", "memory", "storage_mb",
                             "storage", "allow_internet", "network_mode", "allowed_hosts", "workdir", "env", "gpus",
                             "healthcheck"}}  # fmt: skip
    extra = {f"{t}.{k}": v for t, keys in known.items() for k, v in _table(meta, t, path).items() if k not in keys}
    extra.update({k: v for k, v in meta.items() if k not in known and k != "metadata"})
    gpus = _number(env, "gpus", f"{where} [environment]", 0, int)
    if gpus:
        extra["environment.gpus"] = gpus
    task = Task(
        task_id=str(metadata.get("id", d.name)), instruction=instruction, task_dir=d,
        tests=read_tree(d / "tests", "/tests"), test_command="bash /tests/test.sh", reward_from="file",
        solution=(sol_dir / "solve.sh").read_text() if (sol_dir / "solve.sh").is_file() else "",
        solution_files=read_tree(sol_dir, "/solution"),
        solution_command="bash /solution/solve.sh" if (sol_dir / "solve.sh").is_file() else "",
        agent_timeout_s=_number(agent, "timeout_sec", f"{where} [agent]", AGENT_TIMEOUT_DEFAULT_S) or AGENT_TIMEOUT_DEFAULT_S,
        verifier_timeout_s=_number(verifier, "timeout_sec", f"{where} [verifier]", 600.0),
        build_timeout_s=_number(env, "build_timeout_sec", f"{where} [environment]", 600.0),
        memory_mb=memory, cpus=_number(env, "cpus", f"{where} [environment]", None), storage_mb=storage,
        family=str(metadata.get("family", "")), image=str(image),
        dockerfile=dockerfile if dockerfile.is_file() and not image else None,
        compose=compose if compose.is_file() and not image else None,
        workdir=str(env.get("workdir", "") or ""), env=_env_table(env.get("env"), f"{where} [environment].env"),
        verifier_env=_env_table(verifier.get("env"), f"{where} [verifier].env"),
        solution_env=_env_table(solution.get("env"), f"{where} [solution].env"),
        agent_user=str(agent.get("user", "") or ""), network="none" if network == "no-network" else network,
        allowed_hosts=list(env.get("allowed_hosts", [])), extra=extra,
    )  # fmt: skip
    if env.get("healthcheck") is not None:
        task.healthcheck = main_healthcheck(env["healthcheck"], f"{where} [environment.healthcheck]")
    return _apply_compose(task, ("main",)) if task.compose else task


def main_healthcheck(hc, where: str) -> Service:
    """Harbor's ``[environment.healthcheck]``: ``command`` (a shell string, or an argv list,
    or compose's ``test`` with CMD / CMD-SHELL), ``interval_sec``, ``timeout_sec``,
    ``retries``, ``start_period_sec`` (compose's ``interval``/``timeout``/``start_period``
    durations are read too). Run in the agent's container by exec, with compose's rules."""
    if not isinstance(hc, dict):
        raise TaskFormatError(f"{where}: must be a table")
    out = Service(name="main")
    test = hc.get("command", hc.get("test"))
    if isinstance(test, str):
        out.healthcheck = ["/bin/sh", "-c", test]
    elif isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL"):
        out.healthcheck = ["/bin/sh", "-c", " ".join(map(str, test[1:]))] if test[0] == "CMD-SHELL" else list(map(str, test[1:]))
    elif isinstance(test, list) and test:
        out.healthcheck = [str(t) for t in test]
    else:
        raise TaskFormatError(f"{where}: needs a command (a string or a list), got {test!r}")
    for key, attr in (("interval", "health_interval_s"), ("timeout", "health_timeout_s"), ("start_period", "health_start_s")):
        if hc.get(f"{key}_sec") is not None:
            setattr(out, attr, float(_number(hc, f"{key}_sec", where, 0.0)))
        elif hc.get(key) is not None:
            setattr(out, attr, _duration(hc[key], f"{where}.{key}"))
    if hc.get("retries") is not None:
        out.health_retries = int(_number(hc, "retries", where, 3, int))
    return out


def load_terminal_bench(task_dir: str | Path) -> Task:
    d = Path(task_dir)
    path = d / "task.yaml"
    try:
        meta = yaml.safe_load(_need(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise TaskFormatError(f"{path}: {e}") from e
    if not isinstance(meta, dict) or "instruction" not in meta:
        raise TaskFormatError(f"{path}: no 'instruction'")
    parser = meta.get("parser_name", "pytest")
    if parser != "pytest":
        raise TaskFormatError(f"{path}: parser_name {parser!r} is not supported (pytest is)")
    tests = {f"/tests/{k[len('/tests/'):]}": v for k, v in read_tree(d / "tests", "/tests").items()}
    # TB's harness lays its own helpers over whatever a task ships (a distributed task carries
    # copies that install uv from the internet): here the offline equivalents, always
    tests["/tests/setup-uv-pytest.sh"] = TB_SETUP_UV_PYTEST
    tests["/tests/run-uv-pytest.sh"] = TB_RUN_UV_PYTEST
    tests["/tests/run-tests.sh"] = _need(d / "run-tests.sh").read_bytes()
    solution = d / "solution.sh"
    solution_text = solution.read_text() if solution.is_file() else ""
    if not solution_text and (d / "solution.yaml").is_file():
        steps = yaml.safe_load((d / "solution.yaml").read_text()) or []
        solution_text = "\n".join(str(s.get("command", "")) for s in steps if isinstance(s, dict))
    compose = d / "docker-compose.yaml"
    dockerfile = d / "Dockerfile"
    where = str(path)
    known = {"instruction", "max_agent_timeout_sec", "max_test_timeout_sec", "parser_name", "run_tests_in_same_shell"}
    task = Task(
        task_id=d.name, instruction=str(meta["instruction"]), task_dir=d, tests=tests,
        test_command="bash /tests/run-tests.sh", reward_from="pytest", solution=solution_text,
        solution_files={"/solution/solution.sh": solution_text.encode()} if solution_text else {},
        solution_command="bash /solution/solution.sh" if solution_text else "",
        agent_timeout_s=_number(meta, "max_agent_timeout_sec", where, 360.0),
        verifier_timeout_s=_number(meta, "max_test_timeout_sec", where, 60.0),
        dockerfile=dockerfile if dockerfile.is_file() else None,
        compose=compose if compose.is_file() else None,
        verifier_env={"TEST_DIR": "/tests"}, env={"TEST_DIR": "/tests"},
        network="public",  # TB's harness runs its containers on a network with the internet
        extra={k: v for k, v in meta.items() if k not in known},
    )  # fmt: skip
    return _apply_compose(task, ("client",)) if task.compose else task


TB_COMPOSE_VARS = {"T_BENCH_TEST_DIR": "/tests", "T_BENCH_CONTAINER_LOGS_PATH": "/logs",
                   "T_BENCH_CONTAINER_AGENT_LOGS_PATH": "/logs/agent", "T_BENCH_TASK_LOGS_PATH": "/logs"}  # fmt: skip


def _apply_compose(task: Task, service_names: tuple[str, ...]) -> Task:
    """Read a docker-compose file into the task: the agent's service (its build or image,
    environment, working_dir) and every other service, which runs beside it on the
    episode's internal network (``Task.services``; the docker backend starts them)."""
    path = task.compose
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise TaskFormatError(f"{path}: {e}") from e
    services = doc.get("services") if isinstance(doc, dict) else None
    if not isinstance(services, dict):
        raise TaskFormatError(f"{path}: no 'services'")
    name = next((n for n in service_names if n in services), None)
    if name is None:
        raise TaskFormatError(f"{path}: no service named {' or '.join(service_names)}")
    subst = {**TB_COMPOSE_VARS, "T_BENCH_TASK_DOCKER_CLIENT_IMAGE_NAME": f"echo-rl-tb-{task.task_id}"}
    sub = lambda v: _VAR.sub(lambda m: subst.get(m.group(1), os.environ.get(m.group(1), m.group(2) or "")), str(v))  # noqa: E731
    specs = {str(n): _compose_service(path, str(n), svc or {}, sub, main=n == name) for n, svc in services.items()}
    main = specs.pop(name)
    for svc in specs.values():  # a dependency that is not a service of this file (or is the agent's) is an error
        missing = [d for d in svc.depends_on if d not in specs]
        if missing:
            raise TaskFormatError(f"{path}: service {svc.name} depends on {missing}, not services beside the agent's")
    missing = [d for d in main.depends_on if d not in specs]
    if missing:
        raise TaskFormatError(f"{path}: service {name} depends on {missing}, which this file does not define")
    task.service_deps = dict(main.depends_on)
    if main.image or main.dockerfile:
        task.image, task.dockerfile = main.image, main.dockerfile
    task.env.update(main.env)
    task.workdir = main.workdir or task.workdir
    if main.healthcheck is not None and task.healthcheck is None:
        task.healthcheck = main
    task.services = specs
    return task


def _compose_service(path: Path, name: str, svc: dict, sub, *, main: bool = False) -> Service:
    where = f"{path}: service {name}"
    if not isinstance(svc, dict):
        raise TaskFormatError(f"{where}: must be a mapping")
    out = Service(name=name)
    build = svc.get("build")
    if build is not None:
        build = {"context": build} if isinstance(build, str) else build
        context = (path.parent / sub(build.get("context", "."))).resolve()
        out.dockerfile = context / sub(build.get("dockerfile", "Dockerfile"))
        if not out.dockerfile.is_file():
            raise TaskFormatError(f"{where}: {out.dockerfile} does not exist")
    elif svc.get("image"):
        out.image = sub(svc["image"])
    elif not main:  # (the agent's service may leave its image to the task dir's Dockerfile)
        raise TaskFormatError(f"{where}: neither 'build' nor 'image'")
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, os.environ.get(e, "")) for e in map(str, env))
    out.env = {str(k): sub(v) for k, v in env.items()}
    for key in ("command", "entrypoint"):
        value = svc.get(key)
        if value is not None:
            setattr(out, key, shlex.split(sub(value)) if isinstance(value, str) else [sub(v) for v in value])
    out.workdir = sub(svc.get("working_dir") or "")
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        deps = {str(d): {"condition": "service_started"} for d in deps}
    if not isinstance(deps, dict):
        raise TaskFormatError(f"{where}: depends_on must be a list or a mapping")
    for dep, how in deps.items():
        cond = (how or {}).get("condition", "service_started") if isinstance(how, dict) else "service_started"
        if cond not in ("service_started", "service_healthy", "service_completed_successfully"):
            raise TaskFormatError(f"{where}: depends_on.{dep}.condition {cond!r} is not a compose condition")
        out.depends_on[str(dep)] = cond
    hc = svc.get("healthcheck")
    if isinstance(hc, dict) and not hc.get("disable") and hc.get("test") not in (None, "NONE", ["NONE"]):
        test = hc["test"]
        if isinstance(test, str):
            out.healthcheck = ["/bin/sh", "-c", sub(test)]
        elif test and test[0] == "CMD-SHELL":
            out.healthcheck = ["/bin/sh", "-c", " ".join(sub(t) for t in test[1:])]
        elif test and test[0] == "CMD":
            out.healthcheck = [sub(t) for t in test[1:]]
        else:
            raise TaskFormatError(f"{where}: healthcheck.test must be a string or start with CMD / CMD-SHELL")
        for key, attr in (("interval", "health_interval_s"), ("timeout", "health_timeout_s"),
                          ("start_period", "health_start_s")):  # fmt: skip
            if hc.get(key) is not None:
                setattr(out, attr, _duration(hc[key], f"{where}: healthcheck.{key}"))
        if hc.get("retries") is not None:
            out.health_retries = int(hc["retries"])
    return out


def _duration(value, where: str) -> float:
    """A compose duration (``1m30s``, ``500ms``, ``10s``, or a number of seconds) in seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", str(value).strip())
    if not parts or "".join(n + u for n, u in parts) != str(value).strip():
        raise TaskFormatError(f"{where}: {value!r} is not a duration (e.g. 10s, 1m30s, 500ms)")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def is_task_dir(d: Path) -> bool:
    return (d / "task.toml").is_file() or (d / "task.yaml").is_file()


def load_task(task_dir: str | Path) -> Task:
    d = Path(task_dir)
    if (d / "task.toml").is_file():
        return load_harbor(d)
    if (d / "task.yaml").is_file():
        return load_terminal_bench(d)
    raise TaskFormatError(f"{d}: neither a Harbor (task.toml) nor a Terminal-Bench (task.yaml) task")


def find_task_dirs(root: str | Path) -> list[Path]:
    """The task dirs of a dataset: ``root`` itself, its children, or (as Harbor registry
    downloads are nested) its grandchildren."""
    root = Path(root)
    if is_task_dir(root):
        return [root]
    out = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if is_task_dir(child):
            out.append(child)
        else:
            out += sorted(g for g in child.iterdir() if g.is_dir() and is_task_dir(g))
    return out


def task_dirs_in(roots: list[str]) -> list[Path]:
    """The task dirs of several datasets (the CLI's DIR arguments); [] when one is not a directory."""
    return [t for d in roots for t in find_task_dirs(d)] if all(Path(d).is_dir() for d in roots) else []


def load_task_set(root: str | Path) -> list[Task]:
    dirs = find_task_dirs(root)
    if not dirs:
        raise TaskFormatError(f"{root}: no task directories (task.toml or task.yaml) in it or one level down")
    return [load_task(p) for p in dirs]
