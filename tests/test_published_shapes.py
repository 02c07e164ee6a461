"""Public task shapes as published (docker): an image whose ENTRYPOINT starts the task's
service (and never runs its arguments), Harbor's ``[environment.healthcheck]`` gating the
agent's start, a Dockerfile that installs packages at build time, ``[agent] user``. Each
through ``tasks check``'s own episode (oracle 1, no-op 0), each with a control that shows
the feature is what made it pass."""

import shutil

import pytest

from pipeline.sandbox import SandboxConfig, SandboxError
from pipeline.tasks import load_task
from pipeline.tasks.check import check_task
from tests.test_reward_integrity import FIXTURES

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]


def _docker(**kw):
    from pipeline.sandbox.docker import DockerBackend

    cfg = SandboxConfig(backend="docker", timeout_s=60, **kw)
    return DockerBackend(cfg), cfg


def _check(path, **kw):
    backend, cfg = _docker(**kw)
    row = check_task(path, backend, cfg)
    return row


def test_entrypoint_service_gated_by_its_health_check(tmp_path):
    row = _check(FIXTURES / "harbor-entrypoint-service")
    assert (row["status"], row["noop"], row["oracle"]) == ("pass", 0.0, 1.0), row
    # control: without the health check the agent starts before the service is up (6 s)
    d = tmp_path / "no-gate"
    shutil.copytree(FIXTURES / "harbor-entrypoint-service", d)
    toml = (d / "task.toml").read_text()
    (d / "task.toml").write_text(toml[: toml.index("[environment.healthcheck]")])
    assert load_task(d).healthcheck is None
    row = _check(d)
    assert row["oracle"] == 0.0, row


def test_a_health_check_that_never_passes_is_the_infrastructures(tmp_path):
    d = tmp_path / "never"
    shutil.copytree(FIXTURES / "harbor-entrypoint-service", d)
    toml = (d / "task.toml").read_text().replace("/token", "/nothing-here").replace("retries = 20", "retries = 2")
    (d / "task.toml").write_text(toml)
    backend, _ = _docker()
    with pytest.raises(SandboxError, match="never became healthy"):
        backend.start(task=load_task(d)).close()


def test_a_build_installs_from_the_registries_and_a_failed_build_names_its_step(tmp_path):
    row = _check(FIXTURES / "harbor-build-installs")
    assert (row["status"], row["noop"], row["oracle"]) == ("pass", 0.0, 1.0), row
    d = tmp_path / "broken-build"  # a step that fails: named, with its last output lines
    shutil.copytree(FIXTURES / "harbor-build-installs", d)
    (d / "environment" / "Dockerfile").write_text("FROM python:3.12-slim\nWORKDIR /app\n"
                                                  "RUN echo fetching the data && echo no such mirror >&2 && exit 3\n")  # fmt: skip
    backend, _ = _docker()
    with pytest.raises(SandboxError, match=r"(?s)failed at STEP 3/3: RUN echo fetching.*no such mirror") as e:
        backend.start(task=load_task(d)).close()
    assert "harbor-build-installs" in str(e.value) or "broken-build" in str(e.value)


def test_agent_user_end_to_end():
    row = _check(FIXTURES / "harbor-agent-user")
    assert (row["status"], row["noop"], row["oracle"]) == ("pass", 0.0, 1.0), row
