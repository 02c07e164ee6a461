"""Start one vLLM OpenAI server for the learner's model, once the learner has written it.

    python -m pipeline.engines.serve --model-dir RUN_DIR/engine_model --port 8100 -- [vLLM args]

Where it sits: a rollout step of ``pipeline.launch`` → **serve** → vLLM's
``api_server`` (exec'd, so Slurm signals reach vLLM directly). The learner exports its
weights (HF format, tokenizer beside them) to ``--model-dir`` when a run starts or
resumes; this waits for that export, then serves it with the worker extension that loads
later weight versions (``pipeline.engines.vllm.WeightLoader``).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path


def wait_for_model(model_dir: Path, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while not ((model_dir / "config.json").is_file() and any(model_dir.glob("*.safetensors"))):
        if time.time() > deadline:
            raise SystemExit(f"serve: the learner wrote no model to {model_dir} within {timeout_s:g} s "
                             "(see the learner's log)")  # fmt: skip
        time.sleep(2)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, vllm_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(prog="python -m pipeline.engines.serve", description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the learner's export")
    a = p.parse_args(ours)
    model_dir = Path(a.model_dir)
    wait_for_model(model_dir, a.timeout)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--host", a.host, "--port", str(a.port), "--worker-extension-cls", "pipeline.engines.vllm.WeightLoader",
           *vllm_args]  # fmt: skip
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1")
    if a.host not in ("0.0.0.0", "::", "") and "VLLM_HOST_IP" not in env:
        # vLLM's own processes talk over the node's address (not the first interface's)
        env["VLLM_HOST_IP"] = socket.gethostbyname(a.host)
    print("serve:", " ".join(cmd), flush=True)
    os.execve(sys.executable, cmd, env)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
