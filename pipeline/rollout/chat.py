"""Token-exact chat rendering: the tokens between two actions, with a role per token.

Where it sits: rollout loop → **ChatFormat** (prompt tokens, observation tokens) → the
Trajectory's token ids and roles.

The episode is ONE growing token sequence: prompt tokens, then per turn the sampled
ACTION ids exactly as the engine returned them (never re-tokenized), then the text the
chat template puts between this action's stop token and the next action — tokenized
here. Everything rendered comes from the tokenizer's own chat template:

    inter-action text = render(history + [tool message], add_generation_prompt)
                        minus render(history) up to the last stop string (``<|im_end|>``)

e.g. ``"\\n<|im_start|>user\\n<tool_response>\\n" + OBS + "\\n</tool_response><|im_end|>\\n"
"<|im_start|>assistant\\n"``. A sentinel in place of OBS splits it into scaffolding
(PROMPT) and the observation, whose characters carry the role of the part they came from:
the terminal's text and exit code (OUTPUT) or the harness's notices (WARNING).

The whole inter-action text is tokenized at once (as ``apply_chat_template`` would), and a
token gets the role of its characters (offset mapping). Segments always start after a
special token, so this equals tokenizing the whole conversation. A token can span two
roles only where byte-level BPE merges whitespace across a boundary (e.g. output ending
in a newline just before the template's newline); it then takes the observation role
(WARNING over OUTPUT over PROMPT) and is counted in ``role_straddles``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.rollout.toolcalls import parse_tool_call
from pipeline.trajectory import Role

SENTINEL = "\x00ECHO_OBSERVATION\x00"
_PRIORITY = {Role.PROMPT: 0, Role.OUTPUT: 1, Role.WARNING: 2}

# The agent's tools, passed to the chat template as OpenAI-style function specs.
TOOLS = [
    {"type": "function", "function": {
        "name": "bash", "description": "Run one shell command in the task's terminal (cwd /app).",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}},
    {"type": "function", "function": {
        "name": "finish", "description": "End the episode: the task is done.",
        "parameters": {"type": "object", "properties": {}}}},
]  # fmt: skip

SYSTEM_PROMPT = (
    "You are an agent in a Linux terminal. Solve the task by calling the bash tool, one "
    "command per turn; call finish when done."
)


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot give token-exact trajectories (says why)."""


@dataclass
class Segment:
    """Tokens to append to the trajectory, with their roles. [n] each."""

    token_ids: list[int]
    roles: list[int]
    text: str
    role_straddles: int = 0
    content: str = ""  # observations: the tool message's content as the conversation holds it


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if not tok.is_fast:
        raise ChatTemplateError(f"{path}: a fast tokenizer is needed (offset mapping for roles)")
    if not tok.chat_template:
        raise ChatTemplateError(f"{path}: the tokenizer has no chat template")
    return tok


class ChatFormat:
    """Renders an episode's non-sampled tokens with the tokenizer's chat template."""

    def __init__(self, tokenizer, *, system_prompt: str = SYSTEM_PROMPT, tools=TOOLS,
                 stop_token: str = "<|im_end|>", template_kwargs: dict | None = None):  # fmt: skip
        self.tok = tokenizer
        self.system_prompt, self.tools = system_prompt, tools
        self.stop_token = stop_token
        ids = tokenizer.convert_tokens_to_ids([stop_token])
        if not ids or ids[0] is None or ids[0] == tokenizer.unk_token_id:
            raise ChatTemplateError(f"stop token {stop_token!r} is not in the tokenizer's vocabulary")
        self.stop_token_id = int(ids[0])
        self.template_kwargs = template_kwargs or {}
        self._added = sorted(tokenizer.get_added_vocab(), key=len, reverse=True)

    def render(self, messages: list[dict], *, add_generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(
            messages, tools=self.tools, tokenize=False, add_generation_prompt=add_generation_prompt,
            **self.template_kwargs,
        )  # fmt: skip

    def messages(self, instruction: str) -> list[dict]:
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": instruction}]

    def prompt(self, messages: list[dict]) -> Segment:
        """The episode's opening tokens: system + task, then the generation prompt. All PROMPT."""
        text = self.render(messages, add_generation_prompt=True)
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return Segment(ids, [int(Role.PROMPT)] * len(ids), text)

    def decode_action(self, token_ids: list[int]) -> str:
        """The action's text as the conversation holds it (without the stop token)."""
        if token_ids and token_ids[-1] == self.stop_token_id:
            token_ids = token_ids[:-1]
        return self.tok.decode(token_ids, skip_special_tokens=False)

    def parse_action(self, text: str):
        """The action's tool call (``ToolCall``; malformed → ``error`` holds the WARNING)."""
        return parse_tool_call(text)

    def escape(self, text: str) -> str:
        """Break up special-token strings in terminal text (a file holding ``<|im_end|>`` must
        not end the turn): a zero-width space after the first character."""
        for s in self._added:
            if s in text:
                text = text.replace(s, s[0] + "\u200b" + s[1:])
        return text

    def _after_last_stop(self, history: list[dict], rendered: str) -> str:
        """What ``rendered`` holds after the last assistant turn's stop string, checking that
        it agrees with ``render(history)`` up to there (prefix stability)."""
        base = self.render(history, add_generation_prompt=False)
        k = base.rfind(self.stop_token)
        if k < 0 or history[-1]["role"] != "assistant":
            raise ChatTemplateError("the history must end with an assistant turn closed by "
                                    f"{self.stop_token!r}")  # fmt: skip
        k += len(self.stop_token)
        if rendered[:k] != base[:k]:
            raise ChatTemplateError(
                "the chat template re-renders earlier turns once a tool message follows, so the "
                "growing token sequence would differ from what the template gives (for Qwen3: "
                "keep thinking on, or give every assistant turn a non-empty <think> block)"
            )
        return rendered[k:]

    def observation(self, history: list[dict], parts: list[tuple[str, str]], *, final: bool) -> Segment:
        """Tokens after the last action: the tool message holding ``parts`` ((text, kind),
        kind "output" or "warning"), then the next generation prompt (unless ``final``).
        ``history`` ends with the assistant turn that the observation answers."""
        parts = [(self.escape(text), kind) for text, kind in parts]
        content = "".join(text for text, _ in parts)
        tool_msg = {"role": "tool", "content": SENTINEL}
        rendered = self.render(history + [tool_msg], add_generation_prompt=not final)
        inter = self._after_last_stop(history, rendered)
        if inter.count(SENTINEL) != 1:
            raise ChatTemplateError("the chat template does not render a tool message's content verbatim")
        pre, post = inter.split(SENTINEL)
        char_roles = [Role.PROMPT] * len(pre)
        for text, kind in parts:
            char_roles += [Role.WARNING if kind == "warning" else Role.OUTPUT] * len(text)
        char_roles += [Role.PROMPT] * len(post)
        seg = self._tokenize_with_roles(pre + content + post, char_roles)
        seg.content = content
        return seg

    def closing(self, history: list[dict]) -> Segment:
        """Template text after the final action's stop token (e.g. the trailing newline)."""
        tail = self._after_last_stop(history, self.render(history, add_generation_prompt=False))
        return self._tokenize_with_roles(tail, [Role.PROMPT] * len(tail))

    def _tokenize_with_roles(self, text: str, char_roles: list[Role]) -> Segment:
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        roles, straddles = [], 0
        for start, end in enc["offset_mapping"]:
            spanned = set(char_roles[start:end]) or {Role.PROMPT}
            straddles += len(spanned) > 1
            roles.append(int(max(spanned, key=_PRIORITY.__getitem__)))
        return Segment(list(enc["input_ids"]), roles, text, straddles)
