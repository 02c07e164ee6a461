"""The maze microcosm: the maze world, its protocol through the real agent loop, and each
experiment end to end at CI size (``configs/microcosm/smoke.yaml``)."""

from __future__ import annotations

import csv
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.engines.base import BatchingEngine, Generation
from pipeline.engines.maze import MazeExpertEngine, RandomWalkEngine, distinct_batches
from pipeline.rollout.loop import RolloutConfig, run_episode, run_rollouts
from pipeline.rollout.plain import PlainFormat
from pipeline.sandbox.base import SandboxConfig
from pipeline.sandbox.maze import MazeBackend
from pipeline.tasks.verifier import run_verifier
from pipeline.tasks.maze import (DIRECTIONS, INVALID, OPPOSITE, Maze, bfs_actions, explore_actions, generate_maze,
                                 maze_tasks, maze_tokenizer)
from pipeline.trajectory import Role

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return maze_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def chat(tok):
    return PlainFormat(tok, actions=tuple(DIRECTIONS), invalid=INVALID)


def _cfg(**kw):
    return RolloutConfig(**{"group_size": 2, "max_turns": 32, "temperature": 1.0, "max_tokens_per_turn": 2,
                            "max_context_tokens": 400, **kw})  # fmt: skip


@pytest.mark.parametrize("size", [3, 6, 9])
def test_mazes_are_perfect_seeded_and_bfs_walks_the_shortest_path(size):
    m = generate_maze(size, random.Random(size))
    assert len(m.open) // 2 == size * size - 1  # a spanning tree: exactly one path between two cells
    dist = m.distances()
    assert len(dist) == size * size  # connected
    assert generate_maze(size, random.Random(size)).to_json() == m.to_json()
    assert Maze.from_json(m.to_json()).open == m.open
    path = bfs_actions(m)
    assert len(path) == dist[m.start] > 0
    cell = m.start
    for d in path:
        assert m.can_move(cell, d)
        cell = m.step(cell, d)
    assert cell == m.goal
    for c, d0 in dist.items():  # in a perfect maze every move changes the distance by exactly 1
        assert all(abs(dist[m.step(c, d)] - d0) == 1 for d in DIRECTIONS if m.can_move(c, d))


def _observer(maze: Maze) -> list[str]:
    """The explorer rebuilt from what the agent sees (the distance and open sides after each
    move; never a cell or the goal): at the cell it stands on, the sides tried so far and
    the side it came from; a move that raised the distance is undone."""
    dist = maze.distances()
    cell, d_now, moves = maze.start, dist[maze.start], []
    sides = [d for d in DIRECTIONS if maze.can_move(cell, d)]
    tried, back = set(), None
    while d_now:
        move = next(d for d in DIRECTIONS if d in sides and d not in tried and d != back)
        tried.add(move)
        cell = maze.step(cell, move)
        seen_d, seen_sides = dist[cell], [d for d in DIRECTIONS if maze.can_move(cell, d)]  # the terminal's answer
        moves.append(move)
        if seen_d > d_now:  # farther: step back to the fork, which is as it was
            cell = maze.step(cell, OPPOSITE[move])
            moves.append(OPPOSITE[move])
        else:
            d_now, sides, tried, back = seen_d, seen_sides, set(), OPPOSITE[move]
    return moves


def test_the_explorer_needs_only_what_the_agent_sees_and_always_arrives():
    rng = random.Random(3)
    forks = 0
    for i in range(300):
        m = generate_maze((6, 7, 8)[i % 3], rng)
        moves = explore_actions(m)
        assert moves == _observer(m)  # a function of the episode so far: imitable
        cell = m.start
        for d in moves:
            assert m.can_move(cell, d)
            cell = m.step(cell, d)
        assert cell == m.goal
        wrong = (len(moves) - len(bfs_actions(m))) // 2  # each wrong branch costs one move there and one back
        assert len(moves) == len(bfs_actions(m)) + 2 * wrong
        forks += wrong > 0
    assert 0 < forks < 300  # it does guess at forks (where BFS knows), and sometimes guesses right at all of them


def test_move_classes_label_each_explorer_move_by_what_choosing_it_needs():
    sys.path.insert(0, str(ROOT / "tools"))
    from microcosm_move_errors import move_classes

    rng = random.Random(5)
    kinds = {"undo": 0, "next try": 0, "first try": 0}
    for i in range(100):
        m = generate_maze((6, 7, 8)[i % 3], rng)
        moves, classes, dist = explore_actions(m), move_classes(m), m.distances()
        assert len(classes) == len(moves) and classes[0][2] is None
        cell, cells = m.start, [m.start]
        for d in moves:
            cell = m.step(cell, d)
            cells.append(cell)
        for k, ((kind, forced, rev), d) in enumerate(zip(classes, moves)):
            kinds[kind] += 1
            went_up = k > 0 and dist[cells[k]] > dist[cells[k - 1]]
            assert (kind == "undo") == went_up  # an undo follows exactly the moves that raised the distance
            assert kind != "undo" or (forced and d == rev)  # and it is the reverse of that move
            assert kind != "next try" or classes[k - 1][0] == "undo"
            assert k == 0 or rev == OPPOSITE[moves[k - 1]]
    assert all(kinds.values()) and kinds["undo"] == kinds["next try"]  # every undo is followed by a next try


def test_the_maze_terminal_answers_moves_walls_the_goal_and_invalid_actions(tmp_path):
    task = maze_tasks([5], 1, tmp_path, seed=3)[0]
    m = Maze.from_json((task.task_dir / "maze.json").read_text())
    with MazeBackend().start(task_dir=task.task_dir) as box:
        wall = next(d for d in DIRECTIONS if not m.can_move(m.start, d))
        r = box.exec(wall)
        assert r.output.startswith("blocked ") and not r.done
        assert r.observation(SandboxConfig()) == [(r.output, "output")]
        bad = box.exec("north")
        assert bad.observation(SandboxConfig()) == [(INVALID, "warning")]
        assert run_verifier(task, box) == 0.0
        for d in task.solution.split():
            r = box.exec(d)
        assert r.done and r.output.startswith("goal 0 ")
        assert run_verifier(task, box) == 1.0


def test_compare_feedback_says_which_way_the_distance_went_and_nothing_else_changes(tmp_path, tok):
    """``feedback: compare``: each move that moved answers ``closer``/``farther`` (checked
    against the maze's own distances, both words seen), the same mazes as ``distance``; a
    ``distance`` maze.json is as before (no field, ``moved``)."""
    cmp_tasks = maze_tasks([6, 7], 12, tmp_path / "c", seed=21, feedback="compare")
    dist_tasks = maze_tasks([6, 7], 12, tmp_path / "d", seed=21)
    seen = {"closer": 0, "farther": 0}
    for tc, td in zip(cmp_tasks, dist_tasks):
        mc, md = (Maze.from_json((t.task_dir / "maze.json").read_text()) for t in (tc, td))
        assert "feedback" not in json.loads((td.task_dir / "maze.json").read_text()) and md.feedback == "distance"
        assert mc.feedback == "compare" and (mc.open, mc.start, mc.goal) == (md.open, md.start, md.goal)
        assert tc.instruction == td.instruction
        dist, cell = mc.distances(), mc.start
        with MazeBackend().start(task=tc) as bc, MazeBackend().start(task=td) as bd:
            for d in explore_actions(mc):
                rc, rd = bc.exec(d).output, bd.exec(d).output
                nxt = mc.step(cell, d)
                word = "goal" if nxt == mc.goal else "closer" if dist[nxt] == dist[cell] - 1 else "farther"
                assert rc.split(" ", 1) == [word, rd.split(" ", 1)[1]]  # only the first word differs
                assert rd.split()[0] == ("goal" if word == "goal" else "moved")
                seen[word] = seen.get(word, 0) + 1
                cell = nxt
        assert rc.startswith("goal 0 ")
    assert seen["closer"] > 0 and seen["farther"] > 0 and seen["goal"] == 12
    ids = tok.convert_tokens_to_ids(["closer", "farther", "moved"])
    vocab = min(json.loads(p.read_text())["vocab_size"] for p in (ROOT / "configs/models").glob("maze-*.json"))
    assert tok.unk_token_id not in ids and max(ids) < vocab  # words of the tokenizer, inside the models' vocab_size
    with MazeBackend().start(task=cmp_tasks[0]) as box:  # a wall still answers blocked
        m = Maze.from_json((cmp_tasks[0].task_dir / "maze.json").read_text())
        wall = next(x for x in DIRECTIONS if not m.can_move(m.start, x))
        assert box.exec(wall).output.startswith(f"blocked {m.distances()[m.start]} ")
    with pytest.raises(ValueError, match="feedback"):
        maze_tasks([6], 1, tmp_path / "x", seed=1, feedback="colour")


class _Typist(BatchingEngine):
    """Types a fixed list of words, one per turn (the model's side of a scripted episode)."""

    def __init__(self, tok, words, stop):
        self.ids = [tok.convert_tokens_to_ids(w) if w in tok.get_vocab() else tok.unk_token_id for w in words]
        self.stop = stop
        super().__init__(8, 0.0)

    def generate_batch(self, prompts, params):
        return [Generation([self.ids[min(p.count(self.stop), len(self.ids) - 1)], self.stop], [-0.5, -0.1], "stop",
                           self.policy_version) for p in prompts]  # fmt: skip

    def load_weights(self, items):
        pass


def test_an_episode_through_the_real_agent_loop_has_exact_roles(tmp_path, tok, chat):
    task = maze_tasks([6], 1, tmp_path, seed=11)[0]
    m = Maze.from_json((task.task_dir / "maze.json").read_text())
    wall = next(d for d in DIRECTIONS if not m.can_move(m.start, d))
    words = [wall, "<unk>", *task.solution.split()]
    engine = _Typist(tok, words, chat.stop_token_id)
    try:
        t = run_episode(task, "g", engine, MazeBackend(), chat, _cfg(), SandboxConfig(backend="maze"))
    finally:
        engine.close()
    assert t.reward == 1.0 and not t.infra_error
    assert t.metadata["finish_reason"] == "done" and t.metadata["num_turns"] == len(words)
    assert t.metadata["tool_errors"] == 1
    spans = {}
    for ids, role in _runs(t):
        spans.setdefault(role, []).append(tok.decode(ids))
    assert spans[Role.PROMPT] == [task.instruction]
    assert [s.replace(" <eos>", "") for s in spans[Role.ACTION]] == [wall, "<unk>", *task.solution.split()]
    assert spans[Role.WARNING] == [INVALID]
    assert spans[Role.OUTPUT][0].startswith("blocked ") and spans[Role.OUTPUT][-1].startswith("goal 0 ")
    assert len(spans[Role.OUTPUT]) == len(words) - 1  # one response per valid move
    act = [lp for r, lp in zip(t.roles, t.sampler_logprobs) if r == Role.ACTION]
    assert act == [-0.5, -0.1] * len(words)
    assert all(math.isnan(lp) for r, lp in zip(t.roles, t.sampler_logprobs) if r != Role.ACTION)


def _runs(t):
    out, start = [], 0
    for i in range(1, len(t.roles) + 1):
        if i == len(t.roles) or t.roles[i] != t.roles[start]:
            out.append((t.token_ids[start:i], Role(t.roles[start])))
            start = i
    return out


def test_reference_policies_the_expert_solves_every_maze_the_random_walk_some(tmp_path, tok, chat):
    tasks = maze_tasks([5, 6], 24, tmp_path, seed=5)
    cfg, sb = _cfg(max_turns=40), SandboxConfig(backend="maze")
    expert = []
    for batch in distinct_batches(tasks):
        e = MazeExpertEngine(tok, batch, chat.stop_token_id)
        expert += run_rollouts(batch, e, MazeBackend(), chat, cfg, sb, group_size=1, progress=False)
        e.close()
    assert [t.reward for t in expert] == [1.0] * len(tasks)
    turns = {t.task_id: t.metadata["num_turns"] for t in expert}
    assert turns == {t.task_id: len(t.solution.split()) for t in tasks}
    e = MazeExpertEngine(tok, tasks[:4], chat.stop_token_id, "explore")  # the explorer: every maze, its own moves
    explorer = run_rollouts(tasks[:4], e, MazeBackend(), chat, cfg, sb, group_size=1, progress=False)
    e.close()
    assert [t.reward for t in explorer] == [1.0] * 4
    assert [t.metadata["num_turns"] for t in explorer] == [len(explore_actions(Maze.from_json(
        (t.task_dir / "maze.json").read_text()))) for t in tasks[:4]]  # fmt: skip
    e = RandomWalkEngine(tok, chat.stop_token_id, seed=0)
    walks = run_rollouts(tasks, e, MazeBackend(), chat, cfg, sb, group_size=4, progress=False)
    e.close()
    rate = sum(t.reward for t in walks) / len(walks)
    assert 0.0 < rate < 1.0
    assert all(t.metadata["tool_errors"] == 0 for t in walks)  # it only picks open sides
    assert all(not tok.decode(t.token_ids).count("blocked") for t in walks)


def test_config_errors_name_the_key():
    from pipeline.config import ConfigError
    from pipeline.microcosm.world import load_microcosm_config

    with pytest.raises(ConfigError, match="sup_stpes"):
        load_microcosm_config(str(ROOT / "configs/microcosm/default.yaml"), ["sup_stpes=3"])
    with pytest.raises(ConfigError, match="env_only_coef"):
        load_microcosm_config(str(ROOT / "configs/microcosm/default.yaml"), ["env_only_coef=0.3"])
    with pytest.raises(ConfigError, match="rl_start"):
        load_microcosm_config(str(ROOT / "configs/microcosm/default.yaml"), ["rl_start=bfs"])
    with pytest.raises(ConfigError, match="feedback"):
        load_microcosm_config(str(ROOT / "configs/microcosm/default.yaml"), ["feedback=colour"])


def test_the_speed_config_is_the_regime_the_issue_asks_for():
    """configs/microcosm/speed.yaml (README, "The speed claim"): a start with room (an
    imitation stopped early), ≥ 100 RL steps, ≥ 3 seeds, GRPO's swept rate among the sweep's."""
    from pipeline.microcosm.world import load_microcosm_config

    mc = load_microcosm_config(str(ROOT / "configs/microcosm/speed.yaml"), [])
    assert mc.rl_start == "supervised-action+output" and mc.rl_steps >= 100 and len(mc.seeds) >= 3
    assert mc.rl_lr in mc.sweep_lrs and mc.env_coefs == [0.05] and mc.feedback == "compare"
    assert 1.0 in mc.speed_fractions and mc.unseen_size not in mc.train_sizes


def test_feedback_is_in_the_run_cache_keys_and_distance_runs_keep_theirs():
    from pipeline.microcosm.world import load_microcosm_config
    from pipeline.microcosm.arms import _rl_keys, _supervised_keys, supervised_run_dir

    cfg = lambda *o: load_microcosm_config(str(ROOT / "configs/microcosm/original.yaml"), list(o))  # noqa: E731
    dist, cmp = cfg("feedback=distance"), cfg("feedback=compare")
    assert "feedback" not in _supervised_keys(dist, "action") and "feedback" not in _rl_keys(dist)
    assert _supervised_keys(cmp, "action")["feedback"] == "compare" and _rl_keys(cmp)["feedback"] == "compare"
    assert supervised_run_dir(dist, 0, "action") != supervised_run_dir(cmp, 0, "action")
    assert cfg().feedback == "compare" and supervised_run_dir(cfg(), 0, "action") == supervised_run_dir(cmp, 0, "action")
    # the distance runs published in docs/microcosm/original keep their cache dirs (move-errors-seed0-cosine200.jsonl)
    assert supervised_run_dir(dist, 0, "action+output").name == "supervised-action+output-seed0-22decad0"


def _rerun_is_bit_identical(again: Path, first: Path, rows: list[dict]) -> None:
    """Seed 0's rl arms once more in a fresh out_dir: the same curves (losses, probe CE, every
    maze's result) and byte-identical checkpoints. Rollouts run as threads batched by timing;
    each request samples from its own seeded generator (the HF engine, the random walk)."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "microcosm", "rl", "--config", "configs/microcosm/smoke.yaml",
                           f"out_dir={again}", "seeds=[0]"], cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(again / "rl" / "curves.csv") as f:
        rerun = [r for r in csv.DictReader(f) if r["seed"] == "0"]
    drop = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "ci_lo", "ci_hi", "verdict")}  # noqa: E731
    assert [drop(r) for r in rerun] == [drop(r) for r in rows if r["seed"] == "0"]
    ckpts = sorted(p.relative_to(first) for p in (first / "runs").glob("*-seed0-*/ckpt/step_*/*.distcp"))
    assert len(ckpts) >= 8  # the warm start and the three arms
    assert all((first / p).read_bytes() == (again / p).read_bytes() for p in ckpts)
    # the rerun reproduces updates, not a no-op: the ECHO arms' losses are not 0 and their
    # weights moved away from the warm start's (GRPO has no reward at this size: its loss is 0)
    assert all(float(r["loss"]) > 0 for r in rows if r["seed"] == "0" and r["arm"].startswith("echo") and r["loss"])
    warm = {p.name: p.read_bytes() for p in (first / "runs").glob("warmstart-seed0-*/ckpt/step_*/*.distcp")}
    moved = [p for p in ckpts if "echo" in str(p)]
    pairs = [(warm[p.name], (first / p).read_bytes()) for p in moved if p.name in warm]
    assert pairs and all(a != b for a, b in pairs)
    # positive control: the comparison tells weights apart (seed 1's arms trained other weights)
    other = [first / str(p).replace("-seed0-", "-seed1-") for p in ckpts if "grpo" in str(p)]
    assert other and all(o.read_bytes() != (first / p).read_bytes() for o, p in zip(other, [p for p in ckpts if "grpo" in str(p)]))


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_every_experiment_runs_end_to_end_at_ci_size(tmp_path):
    out = tmp_path / "mc"
    for exp in ("rl", "probe", "env_only", "supervised"):
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "microcosm", exp, "--config",
                            "configs/microcosm/smoke.yaml", f"out_dir={out}"], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        d = out / exp
        assert (d / "curves.png").stat().st_size > 1000
        md = (d / "summary.md").read_text()
        with open(d / "curves.csv") as f:
            rows = list(csv.DictReader(f))
        pooled = [r for r in rows if r["seed"] == "all"]  # mean + 95% CI per arm and step, and the differences
        rows = [r for r in rows if r["seed"] != "all"]
        arms = {r["arm"] for r in rows}
        assert {r["seed"] for r in rows} == {"0", "1"}
        assert "95% CI" in md and "smallest detectable difference" in md
        assert pooled and all(float(r["ci_lo"]) <= float(r["solve_rate"]) + 1e-9 <= float(r["ci_hi"]) + 2e-9 for r in pooled)
        for r in rows:  # each evaluation maze's fraction, their mean is the row's solve rate
            per = [float(v) for v in r["per_maze"].split()]
            assert len(per) == 6 and abs(sum(per) / 6 - float(r["solve_rate"])) < 1e-3, r
        for r in rows:
            assert 0.0 <= float(r["solve_rate"]) <= 1.0 and math.isfinite(float(r["probe_ce"])), r
        if exp == "rl":
            assert arms == {"grpo", "echo-0.05", "echo-0.2"} and "Steps to reach a solve rate" in md
            assert {r["arm"] for r in pooled if r.get("verdict")} == {"echo-0.05 − grpo", "echo-0.2 − grpo"}
            assert {r["step"] for r in rows} == {"0", "1", "2"}
            assert "Speed-up: GRPO's steps ÷ the ECHO arm's steps" in md and "| echo-0.05 | 1 |" in md and "| echo-0.05 | 0.8 |" in md
            _rerun_is_bit_identical(tmp_path / "again", out, rows)
        if exp == "probe":  # reuses the rl runs (cached): same numbers
            assert arms == {"grpo", "echo-0.05"} and "probe CE" in md
            assert "reusing" in proc.stdout
        if exp == "env_only":
            assert arms == {"6x6"} and "after − before (paired by maze)" in md
        if exp == "supervised":
            assert arms == {"action", "action+output"}
            # the OUTPUT loss is what lowers the world-model probe: the action-only arm does not learn it
            ce = {(r["arm"], r["seed"], r["step"]): float(r["probe_ce"]) for r in rows}
            for s in ("0", "1"):
                assert ce[("action+output", s, "2")] < ce[("action+output", s, "0")] - 0.05
            # the final weights are kept, and at T=1 on the run's mazes they repeat its last evaluation
            assert all((out / "runs" / d / "ckpt").is_dir() for d in {p.parent.name for p in (out / "runs").glob("supervised-*/curve.csv")})
            ev = subprocess.run([sys.executable, "tools/microcosm_checkpoint_eval.py", "--config", "configs/microcosm/smoke.yaml",
                                 "--seeds", "0", "--arms", "action+output", "--temperatures", "1.0,0.01", f"out_dir={out}"],
                                cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
            assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
            got = [json.loads(line) for line in ev.stdout.splitlines() if line.startswith("{")]
            assert [g["temperature"] for g in got] == [1.0, 0.01] and all(0 <= g["solve_rate"] <= 1 for g in got)
            assert abs(got[0]["probe_ce"] - ce[("action+output", "0", "2")]) < 1e-3  # the same weights as the run's end
            # a published curves.csv seeds a fresh cache: the report is rebuilt from it without training
            fresh = tmp_path / "imported"
            imp = subprocess.run([sys.executable, "-m", "pipeline.cli", "microcosm", "supervised", "--config",
                                  "configs/microcosm/smoke.yaml", "--import-curves", str(d / "curves.csv"), f"out_dir={fresh}"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
            assert imp.returncode == 0, imp.stdout[-3000:] + imp.stderr[-3000:]
            assert imp.stdout.count("imported ") == 4 and imp.stdout.count("reusing the finished run") == 4
            with open(fresh / "supervised" / "curves.csv") as f:
                again = [r for r in csv.DictReader(f) if r["seed"] != "all"]
            key = lambda r: (r["arm"], r["seed"], r["step"], r["solve_rate"], r["probe_ce"], r["per_maze"])  # noqa: E731
            assert sorted(map(key, again)) == sorted(map(key, rows))
            # rl from the supervised action+output arm: its weights, its last evaluation as every arm's step 0
            sup = {k: v for k, v in ce.items() if k[0] == "action+output" and k[2] == "2"}
            rl = subprocess.run([sys.executable, "-m", "pipeline.cli", "microcosm", "rl", "--config", "configs/microcosm/smoke.yaml",
                                 f"out_dir={out}", "rl_start=supervised-action+output", "rl_steps=1", "seeds=[0]"],
                                cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
            assert rl.returncode == 0, rl.stdout[-3000:] + rl.stderr[-3000:]
            assert "random-walk" not in rl.stdout and "reusing the finished run" in rl.stdout
            with open(out / "rl" / "curves.csv") as f:
                got = [r for r in csv.DictReader(f) if r["seed"] == "0"]
            first = {r["arm"]: r for r in got if r["step"] == "0"}
            last = next(r for r in rows if (r["arm"], r["seed"], r["step"]) == ("action+output", "0", "2"))
            assert set(first) == {"grpo", "echo-0.05", "echo-0.2"} and {r["step"] for r in got} == {"0", "1"}
            for r in first.values():
                assert (r["solve_rate"], r["per_maze"]) == (last["solve_rate"], last["per_maze"])
                assert abs(float(r["probe_ce"]) - sup[("action+output", "0", "2")]) < 1e-6
            # an imported curve has no weights: rl from it says so and trains nothing
            bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "microcosm", "rl", "--config", "configs/microcosm/smoke.yaml",
                                  f"out_dir={fresh}", "rl_start=supervised-action+output", "rl_steps=1", "seeds=[0]"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
            assert bad.returncode != 0 and "is missing (an imported curve has no weights)" in bad.stderr, bad.stderr[-2000:]
            # sweep (GRPO alone per learning rate) and prior (both imitation starts, then the same RL arms)
            for extra, args in (("sweep", ["sweep_lrs=[5e-5,1e-3]"]), ("prior", ["env_coefs=[0.05]"])):
                run = subprocess.run([sys.executable, "-m", "pipeline.cli", "microcosm", extra, "--config",
                                      "configs/microcosm/smoke.yaml", f"out_dir={out}", "rl_steps=1", "seeds=[0]", *args],
                                     cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
                assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
                md = (out / extra / "summary.md").read_text()
                with open(out / extra / "curves.csv") as f:
                    arms = {r["arm"] for r in csv.DictReader(f) if r["seed"] == "0"}
                if extra == "sweep":
                    assert arms == {"grpo lr=5e-05", "grpo lr=0.001"} and "mean over the curve − start | verdict" in md
                else:
                    assert arms == {"action→grpo", "action→echo-0.05", "action+output→grpo", "action+output→echo-0.05"}
                    assert "action+output→grpo − action→grpo" in md and "action→echo-0.05 − action+output→grpo" in md
                    assert "Speed-up" in md and "reusing the finished run" in run.stdout  # the starts: supervised's
