"""What crosses from the agent's container into the verifier's (docker, ``verifier_isolation:
separate`` and ``fresh``): the agent's filesystem changes, by the rules of
``pipeline/sandbox/boundary.py``, streamed (the trainer never holds an archive in memory).

Where it sits: verify → ``DockerBackend.verifier_sandbox`` → **carry_changes** → the sweep →
the tests.
"""

from __future__ import annotations

import re
import shlex
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.sandbox.base import SandboxError
from pipeline.sandbox.boundary import MAX_DEPTH, OUTV, SCRATCH, TreeRefused, crosses, filter_tar, top_paths

if TYPE_CHECKING:  # (types only: docker_sandbox calls this module)
    from pipeline.sandbox.docker_sandbox import DockerSandbox


READ_TIMEOUT_S = 20.0  # the engine sends nothing for this long: the archive is abandoned
COPY_DEADLINE_S = 600.0  # one archive, start to end


def archive_stream(container, path: str):
    """The engine's tar archive of ``path`` as chunks, read with a timeout per read and a
    deadline in all: an engine that stops sending (Podman does, after an error in the
    middle of a tree) cannot hang the trainer."""
    api = container.client.api
    res = api._get(api._url("/containers/{0}/archive", container.id), params={"path": path}, stream=True,
                   headers={"Accept-Encoding": "identity"}, timeout=READ_TIMEOUT_S)  # fmt: skip
    api._raise_for_status(res)
    timer = threading.Timer(COPY_DEADLINE_S, res.close)
    timer.start()
    try:
        yield from res.iter_content(1 << 16)
    finally:
        timer.cancel()
        res.close()


def refuse_deep(src: DockerSandbox, paths: list[str]) -> None:
    """Before the engine reads the agent's tree: special files out of it (an engine's
    archive of a FIFO blocks on it), and a tree deeper than ``MAX_DEPTH`` refused (its diff
    and archives fail at PATH_MAX, after a long walk)."""
    if not paths:
        return
    roots = " ".join(shlex.quote(p) for p in paths)
    prune = " -o ".join(f"-path {p}" for p in SCRATCH)
    deep = src._run(f"find {roots} -xdev \\( {prune} \\) -prune -o \\( -type p -o -type s -o -type b -o -type c \\) "
                    f"-print0 2>/dev/null | xargs -0 -r rm -f; find {roots} -xdev -mindepth {MAX_DEPTH} -print -quit "
                    "2>/dev/null | head -c 200", "0", workdir="/", deadline_s=120)  # fmt: skip
    if deep.strip():
        raise TreeRefused(f"the agent's tree is deeper than {MAX_DEPTH} levels: {deep[:120]!r}")


def refuse_large(src: DockerSandbox, paths: list[str]) -> None:
    """The apparent size and the number of entries of what would cross, before any of it is
    read (the stream's own budget stays the bound where this listing lies): a tree over
    either cap is refused in about a second, whatever its size (the agent's failure)."""
    if not paths:
        return
    cap = src.cfg.copy_entries
    roots = " ".join(shlex.quote(p) for p in paths)
    out = src._run(f"du -s -c -B1 --apparent-size -- {roots} 2>/dev/null | tail -1; "
                   f"find {roots} -xdev 2>/dev/null | head -n {cap + len(paths) + 1} | wc -l",
                   "0", workdir="/", deadline_s=120)  # fmt: skip
    words = out.split()
    if words and words[0].isdigit() and int(words[0]) > src.cfg.copy_bytes:
        raise TreeRefused(f"the agent's changed files are {int(words[0])} bytes apparent, over the copy cap "
                          f"{src.cfg.copy_bytes} (sandbox.copy_bytes)")  # fmt: skip
    if len(words) >= 3 and words[-1].isdigit() and int(words[-1]) > cap + len(paths):
        raise TreeRefused(f"the agent's changed tree has more than {cap} entries (sandbox.copy_entries)")


def copy_paths(src: DockerSandbox, dst: DockerSandbox, paths: list[str]) -> None:
    """Copy ``paths`` (with their trees) from ``src`` into ``dst``, streamed through
    ``boundary.filter_tar`` (what may cross, within ``copy_bytes``) and a temporary file:
    the trainer never holds an archive in memory. Each path is read through its parent's
    archive: the engine's archive of a path that is a link follows the link (Podman), and
    a link must cross as a link."""
    budget = {"bytes": src.cfg.copy_bytes, "entries": src.cfg.copy_entries}
    refuse_deep(src, paths)
    refuse_large(src, paths)
    groups: dict[str, list[str]] = {}
    for path in paths:
        parent = str(Path(path).parent)
        groups.setdefault(path if parent == "/" else parent, []).append(path)  # (never the whole root)
    for source, only in groups.items():
        parent = str(Path(source).parent)
        with tempfile.TemporaryFile() as tmp:
            stream = archive_stream(src.container, source)
            try:
                filter_tar(stream, parent, tmp, budget, tuple(only) if source not in only else (), src.workdir)
            except tarfile.TarError as e:
                raise SandboxError(f"the archive of {source} is malformed: {e}") from e
            except SandboxError:
                raise
            except Exception as e:  # noqa: BLE001 (the engine's error, a read timeout, the deadline)
                if "no such file" in str(e).lower() or "not found" in str(e).lower():
                    continue  # gone between the diff and now: nothing to carry
                raise SandboxError(f"reading {source} from the agent's container failed: {e}") from e
            finally:
                stream.close()
            tmp.seek(0)
            try:
                dst.container.put_archive(parent, tmp)
            except Exception as e:
                raise SandboxError(f"copying {source} into the verifier's container failed: {e}") from e


def _copy_owners(src: DockerSandbox, dst: DockerSandbox, paths: list[str]) -> None:
    """Owners other than root, as they were in the agent's container (the engine's archive
    drops them: Podman). Listed by root into a root-only tmpfs, applied without following
    links; a listing a root agent tampered with can change owners only."""
    if not paths:
        return
    listing = f"{OUTV}/owners"
    src._root(f"find {' '.join(shlex.quote(p) for p in paths)} -xdev \\( -uid +0 -o -gid +0 \\) "
              f"-printf '%U:%G\\t%p\\0' > {listing} 2>/dev/null; true")  # fmt: skip
    raw = src.read_file(listing, max_bytes=64 << 20) or b""
    by_owner: dict[str, list[str]] = {}
    for entry in raw.split(b"\0"):
        owner, _, path = entry.decode(errors="surrogateescape").partition("\t")
        if path and re.fullmatch(r"\d+:\d+", owner) and crosses(path, src.workdir):
            by_owner.setdefault(owner, []).append(path)
    for owner, items in by_owner.items():
        for i in range(0, len(items), 500):
            dst._root(f"chown -h {owner} -- " + " ".join(shlex.quote(p) for p in items[i: i + 500]) + " 2>/dev/null; true")


def carry_changes(src: DockerSandbox, dst: DockerSandbox) -> tuple[str, ...]:
    """The agent's filesystem changes that cross the boundary, from its container into the
    verifier's: changed trees copied, deletions repeated. Returns the carried roots."""
    refuse_deep(src, ["/"])
    try:
        changes = src.container.diff() or []
    except Exception as e:
        raise SandboxError(f"listing the agent's changes failed: {e}") from e
    deleted = [c["Path"] for c in changes if c.get("Kind") == 2 and crosses(c["Path"], src.workdir)]
    changed = [c for c in changes if c.get("Kind") != 2 and crosses(c["Path"], src.workdir)]
    # A modified directory (kind 0) with changes below it is carried through those: the
    # image's unchanged files in it (a task's data set) are the verifier's own already.
    parents = {str(Path(c["Path"]).parent) for c in changes}
    carried = top_paths([c["Path"] for c in changed if c.get("Kind") == 1 or c["Path"] not in parents])
    copy_paths(src, dst, carried)
    _copy_owners(src, dst, carried)
    for i in range(0, len(deleted), 500):
        dst._root("rm -rf -- " + " ".join(shlex.quote(p) for p in deleted[i: i + 500]))
    return tuple(carried)
