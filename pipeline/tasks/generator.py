"""Built-in, seeded terminal task families, written as Harbor task directories.

    echo-rl tasks generate --families all --n 4 --out tasks/ --seed 0

Each family draws its parameters from ``random.Random(seed)`` and returns an instruction,
the files that seed ``/app``, a verifier check (bash, true = solved), the files the check
compares against (``tests/expected/``: copied in with the tests, after the agent, never
under /app) and a reference solution. CI checks, in a real sandbox, that each family's
solution scores 1 and doing nothing scores 0.

The check runs as root (it reads ``/tests``, root's, mode 0700) and runs what the agent
wrote (``sum.py``, ``greet.sh``, git in its repository) through ``as_agent``: as
``ECHO_RL_AGENT_UID`` (``setpriv``), which can neither read the check and its expected
values nor write the reward. ``test.sh`` (root) writes the reward from the check's exit
status. Links and special files the agent left are gone before (``boundary.SWEEP``).
Every family's check reads only files: ``verifier_isolation: fresh`` suits them all.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

WORDS = ("alpha", "bravo", "cedar", "delta", "ember", "fjord", "gamma", "harbor", "indigo",
         "juniper", "kepler", "lumen", "maple", "nectar", "onyx", "pixel", "quartz", "raven")  # fmt: skip


@dataclass
class Generated:
    instruction: str
    files: dict[str, bytes | str]  # relative to /app
    check: str  # bash; exit status 0 = solved
    solution: str  # bash, run in /app
    expected: dict[str, bytes | str] = field(default_factory=dict)  # relative to /tests/expected


def files_mkdir(r: random.Random) -> Generated:
    a, b, c, word = r.sample(WORDS, 4)
    return Generated(
        f"Create the directory /app/{a}/{b} and in it a file named {c}.txt whose only content is the line `{word}`.",
        {}, f'[ "$(cat /app/{a}/{b}/{c}.txt)" = "{word}" ]',
        f"mkdir -p /app/{a}/{b} && echo {word} > /app/{a}/{b}/{c}.txt")  # fmt: skip


def text_count(r: random.Random) -> Generated:
    levels = [r.choice(["INFO", "WARN", "ERROR", "DEBUG"]) for _ in range(r.randint(40, 90))]
    log = "".join(f"2026-01-{i % 28 + 1:02d} {lvl} request {r.randint(1, 999)}\n" for i, lvl in enumerate(levels))
    n = levels.count("ERROR")
    return Generated("Count the lines of /app/server.log that contain ERROR and write just that number to /app/answer.txt.",
                     {"server.log": log}, f'[ "$(tr -d "[:space:]" < /app/answer.txt)" = "{n}" ]',
                     "grep -c ERROR server.log > answer.txt")  # fmt: skip


def text_replace(r: random.Random) -> Generated:
    old, new = r.sample(WORDS, 2)
    lines = [f"{k} = {r.choice([old, r.choice(WORDS[8:]), old + '_x'])}" for k in r.sample(WORDS[8:], 6)]
    body = "[main]\n" + "\n".join(lines) + "\n"
    expected = body.replace(old, new)
    return Generated(f"In /app/config.ini replace every occurrence of `{old}` with `{new}`, in place; change nothing else.",
                     {"config.ini": body}, "cmp -s /app/config.ini /tests/expected/config.ini",
                     f"sed -i 's/{old}/{new}/g' config.ini", {"config.ini": expected})  # fmt: skip


def python_fix(r: random.Random) -> Generated:
    nums = [r.randint(1, 99) for _ in range(r.randint(5, 12))]
    script = "nums = [int(x) for x in open('/app/data.txt').read().split()]\ntotal = 0\nfor i in range(1, len(nums)):\n    total += nums[i]\nprint(total)\n"
    return Generated("/app/sum.py should print the sum of the numbers in /app/data.txt but prints the wrong number. Fix it.",
                     {"sum.py": script, "data.txt": " ".join(map(str, nums)) + "\n"},
                     f'[ "$(as_agent python3 /app/sum.py)" = "{sum(nums)}" ]',
                     "sed -i 's/range(1, len(nums))/range(len(nums))/' sum.py")  # fmt: skip


def permissions(r: random.Random) -> Generated:
    name = r.choice(WORDS)
    return Generated(f"Make /app/{name}.sh executable by its owner and make /app/secret.key readable and writable by its owner only (mode 600).",
                     {f"{name}.sh": "#!/bin/sh\necho ok\n", "secret.key": "k3y\n"},
                     f'[ -x /app/{name}.sh ] && [ "$(stat -c %a /app/secret.key)" = "600" ]',
                     f"chmod u+x {name}.sh && chmod 600 secret.key")  # fmt: skip


def archive_extract(r: random.Random) -> Generated:
    inner, word = r.choice(WORDS), r.choice(WORDS)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in ((f"docs/{inner}.txt", word), ("docs/readme.txt", "ignore me")):
            data = (text + "\n").encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return Generated(f"Extract /app/bundle.tar.gz into /app/out and write the content of the file {inner}.txt from it to /app/answer.txt.",
                     {"bundle.tar.gz": buf.getvalue()},
                     f'[ -f /app/out/docs/{inner}.txt ] && [ "$(cat /app/answer.txt)" = "{word}" ]',
                     f"mkdir -p out && tar -xzf bundle.tar.gz -C out && cp out/docs/{inner}.txt answer.txt")  # fmt: skip


def archive_create(r: random.Random) -> Generated:
    names = r.sample(WORDS, 3)
    return Generated("Create the gzip-compressed tar archive /app/backup.tar.gz holding the directory notes/ (with its files).",
                     {f"notes/{n}.md": f"# {n}\n" for n in names},
                     "t=$(tar -tzf /app/backup.tar.gz) && " + " && ".join(f'echo "$t" | grep -q "notes/{n}.md"' for n in names),
                     "tar -czf backup.tar.gz notes")  # fmt: skip


def git_commit(r: random.Random) -> Generated:
    msg, fname = f"add {r.choice(WORDS)} notes", f"{r.choice(WORDS)}.txt"
    return Generated(f"Turn /app/repo into a git repository and commit its file {fname} with the message `{msg}` (any author).",
                     {f"repo/{fname}": "draft\n"},
                     f'cd /app/repo && [ "$(as_agent git log -1 --format=%s 2>/dev/null)" = "{msg}" ] && as_agent git ls-files --error-unmatch {fname} >/dev/null 2>&1',
                     f'cd repo && git init -q . && git add {fname} && git -c user.name=a -c user.email=a@b commit -qm "{msg}"')  # fmt: skip


def json_max(r: random.Random) -> Generated:
    recs = [{"name": n, "score": r.randint(0, 1000)} for n in r.sample(WORDS, 8)]
    best = max(recs, key=lambda x: x["score"])["name"]
    return Generated("/app/data.json is a list of records with `name` and `score`. Write the name with the highest score to /app/answer.txt.",
                     {"data.json": json.dumps(recs, indent=1)}, f'[ "$(tr -d "[:space:]" < /app/answer.txt)" = "{best}" ]',
                     "jq -r 'max_by(.score).name' data.json > answer.txt")  # fmt: skip


def csv_sum(r: random.Random) -> Generated:
    regions = ["north", "south", "east", "west"]
    rows = [(r.choice(regions), r.randint(1, 500)) for _ in range(30)]
    region = r.choice(regions)
    total = sum(a for g, a in rows if g == region)
    csv = "region,amount\n" + "".join(f"{g},{a}\n" for g, a in rows)
    return Generated(f"/app/sales.csv has columns region,amount. Write the total amount for region `{region}` to /app/answer.txt.",
                     {"sales.csv": csv}, f'[ "$(tr -d "[:space:]" < /app/answer.txt)" = "{total}" ]',
                     f"awk -F, '$1==\"{region}\"{{s+=$2}} END{{print s+0}}' sales.csv > answer.txt")  # fmt: skip


def find_large(r: random.Random) -> Generated:
    sizes = {f"data/{n}.bin": r.choice([100, 200, 5000, 9000, 12000]) for n in r.sample(WORDS, 7)}
    big = sorted(Path(p).name for p, s in sizes.items() if s > 4096)
    expected = "\n".join(big) + ("\n" if big else "")
    return Generated("List the names (no directory) of the files under /app/data larger than 4096 bytes, sorted, one per line, in /app/answer.txt.",
                     {p: b"x" * s for p, s in sizes.items()}, "cmp -s /app/answer.txt /tests/expected/answer.txt",
                     "find data -type f -size +4096c -printf '%f\\n' | sort > answer.txt", {"answer.txt": expected})  # fmt: skip


def symlink_latest(r: random.Random) -> Generated:
    versions = sorted(r.sample(range(1, 30), 4))
    return Generated("/app/releases holds directories v1, v2, ... Create a symbolic link /app/current pointing to the highest version (compare numerically).",
                     {f"releases/v{v}/VERSION": f"{v}\n" for v in versions},
                     f'[ -L /app/current ] && [ "$(cat /app/current/VERSION)" = "{versions[-1]}" ]',
                     "ln -sfn /app/releases/$(ls releases | sort -V | tail -1) current")  # fmt: skip


def word_freq(r: random.Random) -> Generated:
    counts = dict(zip(r.sample(WORDS, 5), r.sample(range(1, 9), 5)))
    words = [w for w, c in counts.items() for _ in range(c)]
    r.shuffle(words)
    top = max(counts, key=counts.get)
    return Generated("Write the most frequent word of /app/words.txt (one word per line) to /app/answer.txt.",
                     {"words.txt": "\n".join(words) + "\n"}, f'[ "$(tr -d "[:space:]" < /app/answer.txt)" = "{top}" ]',
                     "sort words.txt | uniq -c | sort -rn | head -1 | awk '{print $2}' > answer.txt")  # fmt: skip


def shell_script(r: random.Random) -> Generated:
    greet = r.choice(["Hello", "Howdy", "Welcome"])
    name = r.choice(WORDS)
    return Generated(f"Write an executable script /app/greet.sh that prints `{greet}, NAME!` where NAME is its first argument.",
                     {}, f'[ "$(as_agent /app/greet.sh {name})" = "{greet}, {name}!" ]',
                     f"printf '#!/bin/sh\\necho \"{greet}, $1!\"\\n' > greet.sh && chmod +x greet.sh")  # fmt: skip


FAMILIES = {f.__name__: f for f in (
    files_mkdir, text_count, text_replace, python_fix, permissions, archive_extract, archive_create,
    git_commit, json_max, csv_sum, find_large, symlink_latest, word_freq, shell_script,
)}  # fmt: skip


# The verifier of every family: the check runs as root, the agent's code in it as the agent
# (see the module doc; git's safe.directory: a root agent's repo is run as nobody).
TEST_SH = """#!/bin/bash
cd /app
if [ -n "${ECHO_RL_AGENT_UID:-}" ] && [ "$(id -u)" = 0 ]; then
    as_agent() { setpriv --reuid="$ECHO_RL_AGENT_UID" --regid="$ECHO_RL_AGENT_UID" --clear-groups --no-new-privs --inh-caps=-all -- "$@"; }
else
    as_agent() { "$@"; }
fi
export -f as_agent
export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*'
if bash /tests/check.sh > /dev/null 2>&1 < /dev/null; then r=1; else r=0; fi
echo "$r" > /logs/verifier/reward.txt
"""


def write_task(g: Generated, out: Path, task_id: str, family: str) -> Path:
    d = out / task_id
    (d / "environment" / "app").mkdir(parents=True, exist_ok=True)
    for sub in ("tests", "solution"):
        (d / sub).mkdir(exist_ok=True)
    (d / "instruction.md").write_text(g.instruction + "\n")
    (d / "task.toml").write_text(
        f'[metadata]\nid = "{task_id}"\nfamily = "{family}"\n\n[agent]\ntimeout_sec = 300\n\n'
        '[verifier]\ntimeout_sec = 60\n\n[environment]\nmemory_mb = 512\nallow_internet = false\n'
    )
    for rel, data in g.files.items():
        p = d / "environment" / "app" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    (d / "environment" / "Dockerfile").write_text("FROM echo-rl-base:latest\nWORKDIR /app\nCOPY app/ /app/\n")
    for rel, data in g.expected.items():
        p = d / "tests" / "expected" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    (d / "tests" / "check.sh").write_text(f"#!/bin/bash\n{g.check}\n")
    (d / "tests" / "test.sh").write_text(TEST_SH)
    (d / "solution" / "solve.sh").write_text(f"#!/bin/bash\nset -e\ncd /app\n{g.solution}\n")
    return d


def generate(families: list[str], n: int, out: str | Path, seed: int | str = 0) -> list[Path]:
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown task families {unknown}; known: {sorted(FAMILIES)}")
    out = Path(out)
    dirs = []
    for family in families:
        for i in range(n):
            rng = random.Random(f"{family}:{seed}:{i}")
            dirs.append(write_task(FAMILIES[family](rng), out, f"{family}-{seed}-{i}", family))
    return dirs
