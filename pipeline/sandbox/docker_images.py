"""Task images for the docker backend: a task's prebuilt image, its Dockerfile (built once,
cached under a tag derived from the hash of the build context), or the base image;
``sandbox.image_map`` maps public names to local ones.

Where it sits: ``DockerBackend.start`` → **task_image** → the episode's container.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from pipeline.sandbox.base import SandboxError


PREP = "-prep"  # the suffix of a task image's offline-ready twin (pipeline/tasks/prepare.py)


def prepared_tag(image: str) -> str:
    """The prepared image's name for a task image ``repo[:tag]``."""
    repo, sep, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, ":", "latest")
    return f"{repo}{sep}{tag}{PREP}"


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _context_digest(context: Path, extra: str) -> str:
    digest = hashlib.sha256(extra.encode())
    for rel, data in sorted(_tree(context).items()):
        digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:16]


def build_failure(task_id: str, dockerfile: Path, log: list[str], error: str) -> str:
    """Which step of the Dockerfile failed, and its last output lines."""
    steps = [line for line in log if re.match(r"^STEP \d+(/\d+)?:|^Step \d+/\d+ :", line)]
    tail = "\n".join(line for line in log[-12:] if line.strip())
    return (f"task {task_id}: building {dockerfile} failed at {steps[-1] if steps else 'its first step'}: "
            f"{error.strip()[:600]}\n{tail[-1500:]}")


class DockerImages:
    """The image half of ``DockerBackend`` (needs ``self.client``, ``self.cfg``, ``self.image``,
    ``self.builds``)."""

    def resolve_image(self, name: str, task_id: str, what: str) -> str:
        """A local image for the public ``name``: mapped, present, or pulled."""
        mapped = self.cfg.image_map.get(name, name)
        for candidate in (mapped, mapped if ":" in mapped.rsplit("/", 1)[-1] else f"{mapped}:latest"):
            try:
                self.client.images.get(candidate)
                return candidate
            except Exception:
                pass
        try:
            self.client.images.pull(mapped)
            return mapped
        except Exception as e:
            raise SandboxError(
                f"task {task_id}: image {name!r} ({what}) is not present, not mapped and cannot be pulled "
                f"({str(e)[:120]}): set sandbox.image_map.{name}=LOCAL_IMAGE or build it (tools/podman_setup.sh "
                "builds local stand-ins for debian/ubuntu/python bases)"
            ) from None

    def _build(self, dockerfile: Path, context: Path, task_id: str, timeout_s: float) -> str:
        text = dockerfile.read_text()
        for name in re.findall(r"^\s*FROM\s+(?:--\S+\s+)*(\S+)", text, re.M | re.I):
            if name.lower() == "scratch" or "$" in name:
                continue
            local = self.resolve_image(name, task_id, f"FROM in {dockerfile.name}")
            if local != name:  # the Dockerfile names the public tag: give it that name here
                repo, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "latest")
                self.client.images.get(local).tag(repo, tag)
        rel = str(dockerfile.relative_to(context)) if dockerfile.is_relative_to(context) else str(dockerfile)
        tag = f"echo-rl-task:{_context_digest(context, rel + repr(sorted(self.cfg.image_map.items())))}"
        try:
            self.client.images.get(tag)
            return tag
        except Exception:
            pass
        # Built as Harbor and Terminal-Bench build: with a network (the build is where a task's
        # packages come from); the agent and verifier phases stay offline (phase_networks).
        net = "none" if self.cfg.build_network == "none" else None  # None: the engine's default network
        log: list[str] = []
        try:
            for chunk in self.client.api.build(path=str(context), dockerfile=rel, tag=tag, rm=True, forcerm=True,
                                               network_mode=net, timeout=int(timeout_s), decode=True):  # fmt: skip
                if "error" in chunk:
                    raise SandboxError(build_failure(task_id, dockerfile, log, chunk["error"]))
                log.extend(str(chunk.get("stream", "")).splitlines())
        except SandboxError:
            raise
        except Exception as e:
            raise SandboxError(build_failure(task_id, dockerfile, log, str(e))) from e
        try:
            self.client.images.get(tag)
        except Exception as e:
            raise SandboxError(build_failure(task_id, dockerfile, log, f"no image {tag} after the build: {e}")) from e
        self.builds += 1
        return tag

    def task_image(self, task_dir: Path, task=None, *, prepared: bool = True) -> str:
        """The task's image; with ``prepared``, its offline-ready one where ``echo-rl tasks
        prepare`` made it (``pipeline/tasks/prepare.py``)."""
        task_id = task.task_id if task is not None else task_dir.name
        if task is not None and task.image:
            image = self.resolve_image(task.image, task_id, "docker_image")
        else:
            dockerfile = task.dockerfile if task is not None else task_dir / "environment" / "Dockerfile"
            if dockerfile is None or not dockerfile.is_file():
                image = self.image
            else:
                image = self._build(dockerfile, dockerfile.parent, task_id, task.build_timeout_s if task else 600)
        if prepared and task is not None:
            try:
                self.client.images.get(prepared_tag(image))
                return prepared_tag(image)
            except Exception:  # noqa: BLE001 - not prepared: the task's own image
                pass
        return image
