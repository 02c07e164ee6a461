"""Parse the one tool call of an action: Qwen3's ``<tool_call>{json}</tool_call>`` format.

Where it sits: engine → action text → **parse_tool_call** → sandbox command, finish, or a
harness WARNING (worded to end in a letter or digit: see ``sandbox.base.join_lines``). Never raises on model output: anything malformed becomes a
``ToolCall`` with ``error`` set, which the loop shows the agent as a WARNING.

    <tool_call>
    {"name": "bash", "arguments": {"command": "ls -la"}}
    </tool_call>
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)


@dataclass
class ToolCall:
    name: str = ""  # "bash" | "finish" | "" when unparsed
    command: str = ""  # bash: the command line
    error: str = ""  # non-empty: the call could not be used; this text is the WARNING
    ignored_calls: int = 0  # further calls in the same action (only the first runs)


def parse_tool_call(text: str) -> ToolCall:
    """The first tool call in ``text`` (see the module docstring for the format)."""
    found = list(_CALL.finditer(text))
    if not found:
        return ToolCall(error="WARNING: no tool call found, reply with one <tool_call> holding "
                              "{\"name\": \"bash\", \"arguments\": {\"command\": CMD}} or call finish")  # fmt: skip
    body, closer = found[0].group(1), found[0].group(2)
    extra = len(found) - 1
    if not closer:
        return ToolCall(error="WARNING: malformed tool call, missing the closing tool_call tag", ignored_calls=extra)
    try:
        call = json.loads(body.strip())
    except json.JSONDecodeError as e:
        return ToolCall(error=f"WARNING: malformed tool call, invalid JSON: {e.msg} at char {e.pos}", ignored_calls=extra)
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return ToolCall(error="WARNING: malformed tool call, expected a JSON object with name and arguments",
                        ignored_calls=extra)  # fmt: skip
    args = call.get("arguments", {})
    if isinstance(args, str):  # some models double-encode the arguments
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            pass
    if not isinstance(args, dict):
        return ToolCall(error="WARNING: malformed tool call, arguments must be a JSON object", ignored_calls=extra)
    name = call["name"]
    if name == "finish":
        return ToolCall(name="finish", ignored_calls=extra)
    if name != "bash":
        return ToolCall(error=f"WARNING: unknown tool {name[:40]!r}, the tools are bash and finish", ignored_calls=extra)
    cmd = args.get("command")
    if not isinstance(cmd, str) or not cmd.strip():
        return ToolCall(error="WARNING: malformed tool call, bash needs a non-empty command string", ignored_calls=extra)
    return ToolCall(name="bash", command=cmd, ignored_calls=extra)
