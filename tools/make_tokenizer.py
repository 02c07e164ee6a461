"""Build the project's tiny tokenizer: Qwen-style byte-level BPE, 2048 tokens, ChatML + tools.

    python tools/make_tokenizer.py --out configs/tokenizer/tiny

Nothing can be downloaded from a model hub, so the tiny recipe ships its own tokenizer.
It has Qwen3's special tokens (``<|im_start|>``, ``<|im_end|>``, ``<tool_call>`` ...), its
pre-tokenizer regex and byte-level alphabet, and BPE merges learned from the built-in
task families' instructions, reference solutions and terminal output, so that episodes
are short. The build is deterministic (same corpus, same merges): CI checks the shipped
files equal a fresh build.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

VOCAB_SIZE = 2048
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Added (not special) tokens, as in Qwen3: they decode to text and show in the action.
ADDED_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML with tools, the shape of Qwen3's template without thinking (tools listed by name
# only, to keep the tiny model's episodes short): tool results are
# user turns wrapped in <tool_response>, consecutive ones grouped; assistant content is
# rendered verbatim (the rollout keeps the sampled tokens, so nothing is re-serialized).
CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content }}"
    "{%- if tools %}{{- '\\nTools:' }}{%- for tool in tools %}{{- ' ' + tool.function.name }}{%- endfor %}"
    "{{- '. Call one per turn: <tool_call>\\n{\"name\": NAME, \"arguments\": {...}}\\n</tool_call>' }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}{{- '<|im_start|>user\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def corpus(n_per_family: int = 24, seed: int = 0) -> list[str]:
    """Text the tiny agent will read and write: instructions, solutions as tool calls,
    and terminal-looking output."""
    from pipeline.tasks.generator import FAMILIES

    rng = random.Random(seed)
    out = []
    for name in sorted(FAMILIES):
        for i in range(n_per_family):
            g = FAMILIES[name](random.Random(seed * 1000 + i))
            out.append(g.instruction)
            call = json.dumps({"name": "bash", "arguments": {"command": g.solution}})
            out.append(f"<tool_call>\n{call}\n</tool_call>")
            out.append('<tool_call>\n{"name": "finish", "arguments": {}}\n</tool_call>')
            for text in g.files.values():
                if isinstance(text, str):
                    out.append(text[:400])
    from pipeline.rollout.chat import SYSTEM_PROMPT, TOOLS

    scaffold = [SYSTEM_PROMPT, json.dumps(TOOLS), "<|im_start|>user\n<tool_response>\n",
                "\n</tool_response><|im_end|>\n<|im_start|>assistant\n", "<|im_start|>system\n"]  # fmt: skip
    out += scaffold * 20
    for code in (0, 1, 2, 127):
        out += [f"exit code: {code}"] * 10
    out += ["WARNING: output truncated, showing the first", "WARNING: command timed out after",
            "WARNING: malformed tool call, invalid JSON", "WARNING: no tool call found",
            "ls -la /app", "cat /app/", "total 4", "No such file or directory", "command not found"] * 3  # fmt: skip
    rng.shuffle(out)
    return out


def build() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(ADDED_TOKENS), special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False, min_frequency=2,
    )  # fmt: skip
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.add_tokens(ADDED_TOKENS)
    return tok


def write(out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    tok = build()
    assert tok.get_vocab_size() <= VOCAB_SIZE, tok.get_vocab_size()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        bos_token=None, unk_token=None, model_max_length=32768,
    )  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="configs/tokenizer/tiny")
    write(Path(ap.parse_args().out))


if __name__ == "__main__":
    main()
