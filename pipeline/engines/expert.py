"""The scripted expert: replays each task's reference solution through the real agent loop.

Where it sits: in place of a model engine, for data made by a *different* policy: the
warm-start imitation set (``tools/warmstart.py``), the world-model probe set
(``pipeline/evaluate.py``) and rollout benchmarks/tests. Its episodes are ordinary
trajectories: the same chat template, sandbox, roles and verifier.

Per episode: ``ls -la`` (look), the reference solution, ``finish``. It recognizes the
task by its instruction in the prompt. A deterministic policy: sampler log-probs are 0.
"""

from __future__ import annotations

import json

from pipeline.engines.base import BatchingEngine, Generation
from pipeline.tasks.base import Task

LOOK = "ls -la /app"


def tool_call(name: str, **arguments) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


class ExpertEngine(BatchingEngine):
    def __init__(self, tokenizer, tasks: list[Task], stop_token_id: int, *, max_batch: int = 64):
        self.tok, self.stop = tokenizer, stop_token_id
        self.solutions: dict[str, str] = {}
        for t in tasks:
            if not t.solution:
                raise ValueError(f"task {t.task_id} has no reference solution")
            key = t.instruction.strip()
            if self.solutions.get(key, t.solution) != t.solution:
                raise ValueError(f"two tasks share the instruction of {t.task_id} with different solutions")
            self.solutions[key] = t.solution
        super().__init__(max_batch, 0.0)

    def _script(self, prompt_text: str) -> list[str]:
        solution = next((s for k, s in self.solutions.items() if k in prompt_text), None)
        if solution is None:
            raise KeyError("the expert does not know this task")
        body = solution.strip()
        if body.startswith("#!"):
            body = "\n".join(line for line in body.splitlines()[1:] if line.strip() not in ("set -e", "cd /app"))
        return [tool_call("bash", command=LOOK), tool_call("bash", command=body.strip()), tool_call("finish")]

    def generate_batch(self, prompts, params):
        out = []
        for prompt in prompts:
            text = self.tok.decode(prompt)
            turn = text.count("<tool_response>")
            script = self._script(text)
            ids = self.tok(script[min(turn, len(script) - 1)], add_special_tokens=False)["input_ids"] + [self.stop]
            out.append(Generation(ids, [0.0] * len(ids), "stop", self.policy_version))
        return out

    def load_weights(self, items) -> None:
        raise TypeError("the scripted expert has no weights")
