"""A chat format without a chat template: the maze microcosm's bare text protocol.

Where it sits: rollout loop → **PlainFormat** (same methods as ``ChatFormat``) → token ids
and roles. The prompt is the instruction's tokens; an action is whatever the model
samples up to the stop token (one word, e.g. ``down``); the observation is each part's
tokens in order (the response OUTPUT, notices WARNING). It suits a word-level tokenizer,
where tokenizing parts one by one equals tokenizing their concatenation, so the roles
are exact by construction (no offsets needed).
"""

from __future__ import annotations

from pipeline.rollout.chat import ChatTemplateError, Segment
from pipeline.rollout.toolcalls import ToolCall
from pipeline.trajectory import Role


class PlainFormat:
    def __init__(self, tokenizer, *, actions: tuple[str, ...], invalid: str, stop_token: str = "<eos>"):
        self.tok, self.actions, self.invalid = tokenizer, set(actions), invalid
        self.stop_token = stop_token
        self.stop_token_id = tokenizer.convert_tokens_to_ids(stop_token)
        if self.stop_token_id is None or self.stop_token_id == tokenizer.unk_token_id:
            raise ChatTemplateError(f"stop token {stop_token!r} is not in the tokenizer's vocabulary")

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def messages(self, instruction: str) -> list[dict]:
        return [{"role": "user", "content": instruction}]

    def prompt(self, messages: list[dict]) -> Segment:
        text = messages[-1]["content"]
        ids = self._ids(text)
        return Segment(ids, [int(Role.PROMPT)] * len(ids), text)

    def decode_action(self, token_ids: list[int]) -> str:
        if token_ids and token_ids[-1] == self.stop_token_id:
            token_ids = token_ids[:-1]
        return self.tok.decode(token_ids, skip_special_tokens=False)

    def parse_action(self, text: str) -> ToolCall:
        """One action word is a command; anything else is an invalid action (a WARNING)."""
        word = text.strip()
        return ToolCall(name="bash", command=word) if word in self.actions else ToolCall(error=self.invalid)

    def observation(self, history: list[dict], parts: list[tuple[str, str]], *, final: bool) -> Segment:
        ids, roles = [], []
        for text, kind in parts:
            part = self._ids(text)
            ids += part
            roles += [int(Role.WARNING if kind == "warning" else Role.OUTPUT)] * len(part)
        content = " ".join(text.strip() for text, _ in parts)
        return Segment(ids, roles, content, content=content)

    def closing(self, history: list[dict]) -> Segment:
        return Segment([], [], "")
