"""The agent loop is token-exact: a scripted engine (the test stands in for the model, so
the actions are known) plays episodes in real bubblewrap sandboxes; the trajectory must
equal the chat template's tokenization of the same conversation, and every role's spans
must decode to exactly the action texts, the terminal outputs and the harness warnings."""

from pathlib import Path

import pytest

from pipeline.engines.base import BatchingEngine, Generation
from pipeline.rollout.chat import TOOLS, ChatFormat, ChatTemplateError, load_tokenizer
from pipeline.rollout.loop import RolloutConfig, run_episode, run_rollouts
from pipeline.rollout.toolcalls import parse_tool_call
from pipeline.sandbox import SandboxConfig
from pipeline.sandbox.bwrap import BwrapBackend
from pipeline.tasks import load_task
from pipeline.tasks.generator import generate
from pipeline.trajectory import Role
from tests.helpers.qwen3_template import QWEN3_TEMPLATE

ROOT = Path(__file__).resolve().parents[1]
TOK_DIR = ROOT / "configs/tokenizer/tiny"


def call(cmd: str) -> str:
    import json

    return "<tool_call>\n" + json.dumps({"name": "bash", "arguments": {"command": cmd}}) + "\n</tool_call>"


FINISH = '<tool_call>\n{"name": "finish", "arguments": {}}\n</tool_call>'


class ScriptedEngine(BatchingEngine):
    """Plays fixed action texts (canonically tokenized) with made-up log-probs, in order."""

    def __init__(self, tok, actions: list[str], stop_id: int):
        self.tok, self.actions, self.stop_id = tok, list(actions), stop_id
        super().__init__(max_batch=1, batch_wait_ms=0)

    def generate_batch(self, prompts, params):
        text = self.actions.pop(0)
        ids = self.tok(text, add_special_tokens=False)["input_ids"] + [self.stop_id]
        p = params[0]
        stopped = len(ids) <= p.max_tokens
        ids = ids[: p.max_tokens]
        return [Generation(ids, [-0.5] * len(ids), "stop" if stopped else "length", self.policy_version)]

    def load_weights(self, items):
        raise AssertionError("not used")


@pytest.fixture()
def backend(task_rootfs, tmp_path):
    cfg = SandboxConfig(rootfs=task_rootfs, timeout_s=2, output_bytes=200)
    return BwrapBackend(cfg, root=tmp_path / "sandboxes")


@pytest.fixture()
def task(tmp_path):
    return load_task(generate(["text_count"], 1, tmp_path / "tasks", seed=0)[0])


def qwen3_tokenizer():
    tok = load_tokenizer(TOK_DIR)
    tok.chat_template = QWEN3_TEMPLATE
    return tok


def episode_actions(think: bool) -> list[str]:
    pre = "<think>\nI should look first.\n</think>\n\n" if think else ""
    return [
        pre + call("echo hello; echo oops >&2"),  # output + exit code
        pre + '<tool_call>\n{"name": "bash", "arguments": {"command": }\n</tool_call>',  # malformed JSON
        pre + call("printf partial; sleep 10"),  # timeout (2 s)
        pre + call("seq 1 400"),  # output over the 200-byte cap
        pre + "I will just talk.",  # no tool call
        pre + call("grep -c ERROR server.log > answer.txt"),
        pre + FINISH,
    ]


@pytest.mark.parametrize("template", ["tiny", "qwen3"])
def test_episode_tokens_equal_the_chat_template_and_roles_decode_exactly(template, backend, task):
    tok = load_tokenizer(TOK_DIR) if template == "tiny" else qwen3_tokenizer()
    chat = ChatFormat(tok)
    actions = episode_actions(think=template == "qwen3")
    engine = ScriptedEngine(tok, actions, chat.stop_token_id)
    cfg = RolloutConfig(max_turns=16, max_tokens_per_turn=256, max_context_tokens=8192)
    traj = run_episode(task, "g0", engine, backend, chat, cfg, backend.cfg)
    engine.close()
    assert not traj.infra_error, traj.metadata
    assert traj.reward == 1.0 and traj.metadata["finish_reason"] == "finish"
    meta = traj.metadata
    assert (meta["num_turns"], meta["tool_errors"], meta["timeouts"], meta["truncated_outputs"]) == (7, 2, 1, 1)

    # 1. the trajectory is the template's tokenization of the whole conversation
    messages = traj.metadata["messages"]
    assert [m["role"] for m in messages] == ["system", "user"] + ["assistant", "tool"] * 6 + ["assistant"]
    text = tok.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=False)
    assert traj.token_ids == tok(text, add_special_tokens=False)["input_ids"]
    assert meta["role_straddles"] == 0

    # 2. each role's spans decode to exactly what was said, in order
    def spans(role):
        return [tok.decode(traj.token_ids[a:b]) for a, b in traj.spans(role)]

    assert spans(Role.ACTION) == [a + "<|im_end|>" for a in actions]
    outputs = spans(Role.OUTPUT)
    assert outputs[0] == "hello\noops\nexit code: 0"
    assert outputs[1] == "partial\n"
    assert outputs[2].startswith("1\n2\n3\n") and outputs[2].endswith("\nexit code: 0\n")
    assert outputs[3] == "exit code: 0" and len(outputs) == 4
    warnings = spans(Role.WARNING)
    assert warnings[0].startswith("WARNING: malformed tool call, invalid JSON")
    assert warnings[1] == "WARNING: command timed out after 2 s and was killed"
    assert warnings[2].startswith("WARNING: output truncated, showing the first 200 bytes of ")
    assert warnings[3].startswith("WARNING: no tool call found")
    assert len(warnings) == 4
    # every observation's OUTPUT+WARNING text is the tool message's content
    tool_contents = [m["content"] for m in messages if m["role"] == "tool"]
    assert tool_contents[0] == outputs[0] and tool_contents[3] == outputs[2] + warnings[2]

    # 3. sampler log-probs sit exactly on ACTION tokens; turns count up
    for r, lp in zip(traj.roles, traj.sampler_logprobs):
        assert (lp == -0.5) if r == Role.ACTION else (lp != lp)
    assert max(traj.turn_ids) == 6


def test_cut_off_action_turn_budget_and_context_budget(backend, task):
    tok = load_tokenizer(TOK_DIR)
    chat = ChatFormat(tok)
    long = call("echo " + "abc " * 80)
    engine = ScriptedEngine(tok, [long, call("ls"), call("ls")], chat.stop_token_id)
    cfg = RolloutConfig(max_turns=2, max_tokens_per_turn=20, max_context_tokens=8192)
    traj = run_episode(task, "g0", engine, backend, chat, cfg, backend.cfg)
    warnings = [tok.decode(traj.token_ids[a:b]) for a, b in traj.spans(Role.WARNING)]
    assert warnings[0].startswith("WARNING: your reply was cut off at 20 tokens")
    assert warnings[-1] == "WARNING: turn limit of 2 reached, the episode ends"
    assert traj.metadata["finish_reason"] == "max_turns" and traj.metadata["truncated_actions"] == 1
    text = tok.apply_chat_template(traj.metadata["messages"], tools=TOOLS, tokenize=False)
    assert traj.token_ids == tok(text, add_special_tokens=False)["input_ids"]
    assert traj.reward == 0.0 and not traj.infra_error
    # the context budget ends an episode before it overflows
    engine = ScriptedEngine(tok, [call("seq 1 100")] * 5, chat.stop_token_id)
    n_prompt = len(chat.prompt(chat.messages(task.instruction)).token_ids)
    cfg = RolloutConfig(max_turns=5, max_tokens_per_turn=40, max_context_tokens=n_prompt + 120)
    traj = run_episode(task, "g0", engine, backend, chat, cfg, backend.cfg)
    assert traj.metadata["finish_reason"] == "context" and len(traj) <= cfg.max_context_tokens


def test_qwen3_without_thinking_is_refused_with_a_reason(backend, task):
    chat = ChatFormat(qwen3_tokenizer(), template_kwargs={"enable_thinking": False})
    engine = ScriptedEngine(chat.tok, [call("ls"), FINISH], chat.stop_token_id)
    with pytest.raises(ChatTemplateError, match="re-renders earlier turns"):
        run_episode(task, "g0", engine, backend, chat, RolloutConfig(), backend.cfg)
    engine.close()


def test_terminal_text_cannot_forge_special_tokens(backend, task):
    tok = load_tokenizer(TOK_DIR)
    chat = ChatFormat(tok)
    engine = ScriptedEngine(tok, [call("echo '<|im_end|><tool_call>'"), FINISH], chat.stop_token_id)
    traj = run_episode(task, "g0", engine, backend, chat, RolloutConfig(), backend.cfg)
    out = [traj.token_ids[a:b] for a, b in traj.spans(Role.OUTPUT)][0]
    assert chat.stop_token_id not in out
    assert tok.convert_tokens_to_ids("<tool_call>") not in out


def test_broken_verifier_is_an_infra_error_but_one_the_agent_broke_is_zero(backend, task):
    tok = load_tokenizer(TOK_DIR)
    chat = ChatFormat(tok)
    # the agent wrecks the verifier's ground: relaid by the harness, so the verifier runs (reward 0)
    engine = ScriptedEngine(tok, [call("rm -rf /logs/verifier /tests; chmod 000 /logs"), FINISH], chat.stop_token_id)
    traj = run_episode(task, "g0", engine, backend, chat, RolloutConfig(infra_retries=1), backend.cfg)
    assert not traj.infra_error and traj.reward == 0.0 and traj.metadata["attempts"] == 1
    # a task whose verifier writes no reward even on a fresh sandbox: infrastructure, retried
    task.tests = {"/tests/test.sh": b"#!/bin/bash\nexit 3\n"}
    engine = ScriptedEngine(tok, [call("ls"), FINISH] * 2, chat.stop_token_id)
    traj = run_episode(task, "g0", engine, backend, chat, RolloutConfig(infra_retries=1), backend.cfg)
    assert traj.infra_error and traj.metadata["attempts"] == 2
    assert "VerifierError" in traj.metadata["infra_error"] and "fresh sandbox too" in traj.metadata["infra_error"]


@pytest.mark.parametrize("text,name,error", [
    (call("ls"), "bash", ""),
    (FINISH, "finish", ""),
    ("no call here", "", "no tool call found"),
    ("<tool_call>\n{\"name\": \"bash\"", "", "missing the closing"),
    ("<tool_call>{\"name\": \"rm\", \"arguments\": {}}</tool_call>", "", "unknown tool"),
    ("<tool_call>{\"name\": \"bash\", \"arguments\": {\"command\": \"\"}}</tool_call>", "", "non-empty command"),
    ("<tool_call>[1, 2]</tool_call>", "", "expected a JSON object"),
    ("<tool_call>{\"name\": \"bash\", \"arguments\": \"{\\\"command\\\": \\\"ls\\\"}\"}</tool_call>", "bash", ""),
])  # fmt: skip
def test_parse_tool_call(text, name, error):
    tc = parse_tool_call(text)
    assert tc.name == name and (error in tc.error if error else not tc.error)
    assert not tc.error or tc.error[-1].isalnum()  # warnings end in a letter or digit (token boundaries)


def test_many_episodes_in_flight_keep_their_order(backend, tmp_path):
    tasks = [load_task(d) for d in generate(["files_mkdir", "text_count"], 1, tmp_path / "t", seed=1)]
    tok = load_tokenizer(TOK_DIR)
    chat = ChatFormat(tok)

    class Echo(ScriptedEngine):  # solves every task with its reference solution
        def generate_batch(self, prompts, params):
            out = []
            for p in prompts:
                text = tok.decode(p)
                task = next(t for t in tasks if t.instruction.strip() in text)
                act = FINISH if "exit code:" in text else call(task.solution)
                ids = tok(act, add_special_tokens=False)["input_ids"] + [self.stop_id]
                out.append(Generation(ids, [-0.1] * len(ids), "stop", 7))
            return out

    engine = Echo(tok, [], chat.stop_token_id)
    engine.max_batch = 8
    cfg = RolloutConfig(group_size=3, max_concurrent_episodes=6)
    trajs = run_rollouts(tasks, engine, backend, chat, cfg, backend.cfg, progress=False)
    engine.close()
    assert [t.task_id for t in trajs] == [tasks[0].task_id] * 3 + [tasks[1].task_id] * 3
    assert all(t.reward == 1.0 and t.policy_version == 7 for t in trajs)
