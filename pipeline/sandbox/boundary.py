"""The trust boundary between the agent phase and the verifier phase: what of the agent's
world the verifier sees. One screen, one home: a new attack kind is closed here.

Where it sits: rollout (the agent finished) → verify → **the verifier's sandbox is made
from the agent's** (this module's lists, applied by each backend) → the tests run.

What crosses (an allow-list):
- files: regular files, directories and symbolic links of the agent's filesystem
  changes, with their modes and owners; on docker (``verifier_isolation: separate``) every
  change outside ``TOOLCHAIN`` and ``SCRATCH``, on bwrap the agent's writable tree.
  A regular file crosses at its apparent size, and the tree only up to
  ``SandboxConfig.copy_bytes`` in all (sparse files are not a way round the cap).
- links: only those that do not resolve into ``GROUND`` (or to one of its ancestors, or
  through ``/proc``) once the verifier's ground exists; the others are removed before the
  tests are laid (``SWEEP``), so no check, root or not, follows one.
- network: the services the agent left listening (docker: the verifier's container joins
  the agent container's network namespace; loopback ports and abstract unix sockets).

What never crosses:
- processes: the verifier has its own process table (docker: its own container; bwrap:
  every command's processes die with it); the agent's processes are first in line for the
  OOM killer (``OOM_AGENT``), the harness's keeper last.
- scratch space: ``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run`` are the verifier's own.
- special files: FIFOs, sockets and device nodes in the agent's tree are removed (a FIFO
  answer would hang the check; the agent's failure, reward 0).
- the toolchain: ``TOOLCHAIN`` comes from the task's image, never from the agent (what
  a root agent installs or replaces there is not what the verifier runs).
- the environment: the verifier runs under ``env -i`` with ``VERIFIER_PATH``, a fresh
  ``HOME`` and none of ``UNSAFE_ENV`` (below).
- the verifier's ground itself: ``/tests`` is root's, mode 0700; code of the agent that a
  check runs is run as ``ECHO_RL_AGENT_UID`` (never root), which cannot read it.
"""

from __future__ import annotations

import io
import shlex
import tarfile
from typing import BinaryIO, Iterable

from pipeline.sandbox.errors import SandboxError

# where a docker sandbox's exec writes a command's output: the agent's and the verifier's
# own tmpfs, root's (0700), so neither phase reads or floods the other's
OUT, OUTV = "/run/echo-rl-out", "/run/echo-rl-vout"

# The verifier's process environment: system directories first on PATH, no user site.
VERIFIER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Inherited variables that change what a program loads: never passed to the verifier.
UNSAFE_ENV = ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONHOME", "LD_PRELOAD", "LD_LIBRARY_PATH",
              "LD_AUDIT", "BASH_ENV", "ENV", "PERL5LIB", "PERL5OPT", "NODE_OPTIONS", "RUBYOPT", "GIT_DIR",
              "GIT_CONFIG_GLOBAL", "PYTEST_ADDOPTS", "PROMPT_COMMAND")  # fmt: skip
# Where an agent could leave files the verifier reads, swept before the tests run (bwrap and
# ``same``; docker ``separate`` sweeps what it carried).
AGENT_ROOTS = ("/app", "/home", "/root", "/logs/agent", "/tmp", "/var/tmp", "/dev/shm", "/opt", "/srv")
# The verifier's ground: laid anew by the harness right before the tests run.
GROUND = ("/tests", "/logs/verifier", "/solution")
# Scratch dirs: the verifier's are fresh (tmpfs), nothing of the agent's crosses.
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/proc", "/sys", "/dev")
# Where the verifier's programs and their configuration come from: the task's image only.
# (/root/.local/bin: where uv's installer puts uv, and a prepared image its toolchain, which
# test.sh puts first on PATH: nothing the agent leaves there runs as the verifier)
TOOLCHAIN = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr", "/etc", "/boot", "/opt", "/var/lib",
             "/var/cache", "/root/.local/bin")  # fmt: skip
# /tests: root's alone while the verifier runs (code of the agent that a check runs cannot read it).
TESTS_MODE = 0o700
# What of TOOLCHAIN crosses all the same: accounts and the configuration of services a task
# may ask a root agent to set up; none of it changes what the verifier's programs load.
TOOLCHAIN_CROSSES = ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow", "/etc/subuid", "/etc/subgid",
                     "/etc/hosts", "/etc/hostname", "/etc/crontab", "/etc/cron.d", "/etc/nginx", "/etc/apache2",
                     "/etc/redis", "/etc/postgresql", "/etc/mysql", "/etc/ssh")  # fmt: skip
# The uid a check runs the agent's code as when the agent was root (no agent uid to reuse).
NOBODY = 65534
# Written to /proc/self/oom_score_adj by every agent command before it runs: the OOM killer
# takes the agent's processes before the harness's (raising one's own score needs no rights).
OOM_AGENT = 1000


# Where a task may ask the agent to leave files outside its work dir: the only roots that
# cross besides the work dir and ``TOOLCHAIN_CROSSES`` (an allow-list: a new kind of
# top-level entry, ``/conftest.py``, ``/pytest.ini``, ``/node_modules``, ``/.git``, stays out).
DATA_ROOTS = ("/home", "/root", "/srv", "/mnt", "/media", "/data", "/workspace", "/var/log", "/var/www", "/var/spool",
              "/var/mail", "/var/backups", "/var/opt", "/logs/agent")  # fmt: skip


def _under(p: str, roots) -> bool:
    return any(p == r or p.startswith(r.rstrip("/") + "/") for r in roots)


def _ancestors(p: str) -> set[str]:
    """The strict ancestors of ``p`` ("/" included)."""
    parts = p.strip("/").split("/")
    return {"/" + "/".join(parts[:i]) for i in range(len(parts))} if p.strip("/") else set()


def above_verifier(workdir: str = "") -> set[str]:
    """Directories whose entries a verifier's tools read as configuration because of where
    they are: the strict ancestors of ``GROUND`` and of the work dir (the verifier's cwd).
    pytest finds its ini file and ``conftest.py`` walking up from its test files; Python's
    path, git (``.git``), node (``node_modules``, ``package.json``), cargo (``.cargo``),
    make's includes, editorconfig-style tools all walk up from their cwd or their files."""
    wd = "/" + workdir.strip("/") if workdir.strip("/") else ""
    return set().union(*(_ancestors(d) for d in (*GROUND, *((wd,) if wd else ()))))


# What a tool finds by walking up from its cwd or its files: configuration and package
# markers (pytest's ini files and conftest.py, Python packages and .pth files, git, node,
# cargo, go, make, cmake...). In a directory above the verifier's files or the work dir,
# these never cross, nor does any dot-entry (.git, .cargo, .npmrc, .python-version, ...).
CONFIG_NAMES = {"conftest.py", "__init__.py", "setup.py", "pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini",
                "package.json", "node_modules", "Makefile", "makefile", "GNUmakefile", "Cargo.toml", "go.mod", "go.work",
                "CMakeLists.txt", "Gemfile", "pom.xml", "build.gradle", "tsconfig.json", "deno.json", "composer.json"}  # fmt: skip


def config_like(name: str) -> bool:
    return name.startswith(".") or name in CONFIG_NAMES or name.endswith((".ini", ".cfg", ".toml", ".mk", ".pth"))


def crosses(path: str, workdir: str = "") -> bool:
    """Whether a changed path of the agent's container is carried into the verifier's: an
    allow-list of roots (the work dir, ``DATA_ROOTS``, ``TOOLCHAIN_CROSSES``; at ``/`` nothing
    else), minus scratch, the verifier's ground and the toolchain, and minus what a
    verifier's tool would read as configuration because of where it is: a ``config_like``
    entry of a directory above the verifier's files or the work dir (``above_verifier``),
    other than the path down to them."""
    p = "/" + path.strip("/")
    wd = "/" + workdir.strip("/") if workdir.strip("/") else ""
    named = DATA_ROOTS + TOOLCHAIN_CROSSES + ((wd,) if wd else ())
    if p == "/" or _under(p, SCRATCH + GROUND) or not _under(p, named):
        return False
    if _under(p, TOOLCHAIN) and not _under(p, TOOLCHAIN_CROSSES + ((wd,) if wd else ())):
        return False
    above = above_verifier(workdir)
    parent, name = p.rsplit("/", 1)
    return (parent or "/") not in above or p in above or p in named or not config_like(name)


def member_path(parent: str, name: str) -> str:
    """The absolute path of a tar member named ``name`` relative to ``parent`` (only a
    leading ``./`` or ``/`` is a prefix: ``.git/index`` stays ``.git/index``)."""
    while name.startswith("./"):
        name = name[2:]
    name = name.lstrip("/")
    return parent.rstrip("/") + "/" + name if name not in ("", ".") else (parent.rstrip("/") or "/")


# Privilege never crosses in a file's metadata: the setuid and setgid bits are cleared and
# of the pax records only these are kept (no xattrs: ``security.capability``, ACLs, SELinux
# labels; no others). The sweep (below) does the same to the tree in place, on every backend.
PRIVILEGE_BITS = 0o6000
PAX_KEPT = ("path", "linkpath", "size", "uid", "gid", "uname", "gname", "mtime")


def unprivileged(m: tarfile.TarInfo) -> tarfile.TarInfo:
    """The member without the setuid/setgid bits and without extended attributes."""
    if DEFENCES.strip_privilege:
        m.mode &= ~PRIVILEGE_BITS if not m.isdir() else ~0o4000  # (a dir's setgid: group inheritance only)
        m.pax_headers = {k: v for k, v in m.pax_headers.items() if k in PAX_KEPT}
    return m


class Defences:
    """The three layers that keep privilege carried in file metadata from crossing into the
    verifier (each alone stops it; tests switch them off one by one to show that, and all
    three to show the attack is real). Nothing in a config reaches these switches.
    - ``strip_privilege``: the carry and the sweep clear setuid/setgid and drop xattrs.
    - ``no_new_privs_container``: the verifier's container runs with no-new-privileges.
    - ``no_new_privs_drop``: every drop to the agent's uid sets no-new-privs, clears the
      inheritable capabilities (the kernel clears the others at the uid change)."""

    strip_privilege = True
    no_new_privs_container = True
    no_new_privs_drop = True


DEFENCES = Defences()


def drop_flags() -> str:
    """setpriv's flags for a drop to the agent's uid, after ``--reuid/--regid``."""
    return "--no-new-privs --inh-caps=-all " if DEFENCES.no_new_privs_drop else ""


class TreeRefused(SandboxError):
    """The agent's tree cannot cross (over ``copy_bytes`` or ``copy_entries``, too deep): the agent's
    doing. The verifier's blame check then runs where no agent acted, and the episode
    scores 0 with ``failure="agent"``."""


MAX_DEPTH = 256  # directory levels of the agent's tree that may cross (engines' archives stop at PATH_MAX)


class _Chunks(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (an engine's archive stream)."""

    def __init__(self, chunks: Iterable[bytes]):
        self.it, self.rest = iter(chunks), b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self.rest:
            try:
                self.rest = next(self.it)
            except StopIteration:
                return 0
        n = min(len(b), len(self.rest))
        b[:n], self.rest = self.rest[:n], self.rest[n:]
        return n


def filter_tar(chunks: Iterable[bytes], parent: str, out: BinaryIO, budget: dict, only: tuple[str, ...] = (),
               workdir: str = "") -> None:
    """Stream the tar archive ``chunks`` (members named relative to ``parent``) into the tar
    ``out``, keeping only what crosses: directories, regular files, symbolic links (their
    targets are the sweep's business) and hard links to members already kept, at paths
    that ``crosses`` (and are, or are under, one of ``only`` when given). FIFOs, sockets and devices stay behind. A member's header is read
    before its data, so a sparse file of any apparent size costs nothing before it is
    refused: ``budget`` holds the bytes and entries left; past either, ``TreeRefused``."""
    kept: set[str] = set()
    with tarfile.open(fileobj=io.BufferedReader(_Chunks(chunks), 1 << 16), mode="r|") as src, \
            tarfile.open(fileobj=out, mode="w|") as dst:  # fmt: skip
        for m in src:
            path = member_path(parent, m.name)
            if not crosses(path, workdir) or not (m.isdir() or m.isfile() or m.issym() or m.islnk()):
                continue
            if only and not any(path == o or path.startswith(o + "/") for o in only):
                continue
            if m.islnk() and m.linkname not in kept:
                continue
            budget["entries"] -= 1
            if m.isfile():
                budget["bytes"] -= m.size
            if budget["bytes"] < 0 or budget["entries"] < 0:
                raise TreeRefused(f"the agent's tree is over the copy cap ({path}: {m.size} bytes apparent)")
            dst.addfile(unprivileged(m), src.extractfile(m) if m.isfile() else None)
            kept.add(m.name)


def top_paths(paths: list[str]) -> list[str]:
    """The changed paths with no changed ancestor among them (a directory carries its tree)."""
    out: list[str] = []
    for p in sorted({"/" + q.strip("/") for q in paths}):
        if not out or not (p == out[-1] or p.startswith(out[-1].rstrip("/") + "/")):
            out.append(p)
    return out


# The sweep: run as root in the verifier's sandbox (its own, clean toolchain) over the
# roots the agent could write, after the agent's tree arrived and before the tests are
# laid. Iterative (no recursion limit on a deep tree), never follows a link, never raises.
# Removes special files and links that resolve into the verifier's ground; with ``strip``,
# clears setuid/setgid bits (a directory keeps its setgid) and removes every extended
# attribute but ``user.*`` (file capabilities, ACLs). Prints one line per removal and a
# final count line.
SWEEP = r'''
import os, stat, sys
ground = {GROUND!r}
danger = set(ground) | {{"/", "/logs", "/proc"}}
strip = sys.argv[1] == "strip"
def bad(path):
    try:
        raw = os.readlink(path)
    except OSError:
        return False
    if raw.startswith("/proc") or "/proc/" in raw:
        return True
    t = os.path.realpath(path)
    return t in danger or any(t.startswith(g + "/") for g in ground) or t.startswith("/proc/")
def unprivilege(path, st):
    bits = stat.S_ISUID | (0 if stat.S_ISDIR(st.st_mode) else stat.S_ISGID)
    try:
        if st.st_mode & bits:
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~bits)
        for name in os.listxattr(path):
            if not name.startswith("user."):
                os.removexattr(path, name)
    except OSError as e:
        print("cannot unprivilege", repr(path), e)
removed, stack = 0, [r for r in sys.argv[2:] if os.path.lexists(r)]
while stack:
    top = stack.pop()
    try:
        st = os.lstat(top)
    except OSError:
        continue
    kill = stat.S_ISLNK(st.st_mode) and bad(top) or not (stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode)
                                                         or stat.S_ISDIR(st.st_mode))
    if kill:
        try:
            os.unlink(top)
            removed += 1
            print("removed", repr(top))
        except OSError as e:
            print("cannot remove", repr(top), e)
        continue
    if strip and not stat.S_ISLNK(st.st_mode):
        unprivilege(top, st)
    if stat.S_ISDIR(st.st_mode):
        try:
            if os.getuid() != 0 and stat.S_IMODE(st.st_mode) & 0o500 != 0o500:  # no root: the agent's own dirs
                os.chmod(top, stat.S_IMODE(st.st_mode) | 0o500)
            with os.scandir(top) as it:
                stack.extend(e.path for e in it)
        except OSError:
            pass
print("sweep-removed", removed)
'''.format(GROUND=GROUND)


def sweep_command(roots: list[str]) -> str:
    """The shell command that runs ``SWEEP`` over ``roots`` with an isolated Python."""
    mode = "strip" if DEFENCES.strip_privilege else "keep"
    return "python3 -I -c " + shlex.quote(SWEEP) + f" {mode} " + " ".join(shlex.quote(r) for r in roots)
