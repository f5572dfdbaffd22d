"""Rollout workers: N Ray actors collect one training run's root rollouts and branches in parallel.

With ``rollout_workers = N > 0`` (a :class:`~deepgrpo_agent.config.GRPOConfig` field) the trainer
hands each collection call (:meth:`~deepgrpo_agent.trainer.GRPOTrainer.sample_roots`,
:meth:`~deepgrpo_agent.trainer.GRPOTrainer.branch`) to a :class:`RolloutWorkerPool` instead of its
own engine and env. Everything else (advantages, pivots, the update, evaluation, checkpoints) stays
on the learner. What travels, and when:

- once, when the pool starts: a :class:`WorkerSpec` (env id and arguments, the model's
  transformers config, dtype, device, engine kind) from which each worker builds its own model,
  engine and native vector env;
- after every update: the weights as numpy arrays, put in Ray's object store once
  (:meth:`RolloutWorkerPool.broadcast`, one ``ray.put`` per step); each worker pulls them at its next
  request (zero-copy from its node's object store) and copies them into its model;
- per collection call: one request per worker with its share of the groups (problem indices, or
  the ``reset_to`` states as plain dicts, :func:`state_to_data`), the sampling settings and a torch
  generator state; back comes a :class:`~deepgrpo_agent.rollout.RolloutBatch` as plain data
  (:func:`batch_to_data`) and the generator's end state.

Reproducibility: groups are split into N contiguous shards. Shard 0 continues the learner's
generator (its end state becomes the learner's), shards 1..N-1 draw from generators seeded with
N-1 numbers the learner draws from its generator first. A run with the same seed and N therefore
repeats exactly, and N = 1 samples exactly what the learner would have sampled itself.

Failures: a worker that dies (or does not answer within ``timeout_s``) is replaced by a new actor
and its request sent again; the request carries the generator state, the weights' version and the
inputs, so the re-collected share is the one the dead worker would have returned. After
``max_restarts`` failures within one call the pool raises instead of looping.

The engine is chosen by :func:`make_engine` (``"hf"``: :class:`~deepgrpo_agent.engine.hf.HFEngine`);
another engine (vLLM) plugs in there.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

import envs_registry
from deepgrpo_agent.engine.protocol import Engine, SamplingParams
from deepgrpo_agent.ray_runner import connect, require_ray
from deepgrpo_agent.rollout import RolloutBatch
from deepgrpo_env.problems import Problem
from deepgrpo_env.state import EnvState

__all__ = [
    "RolloutWorker",
    "RegistryEnv",
    "RolloutWorkerPool",
    "WorkerSpec",
    "batch_from_data",
    "batch_to_data",
    "make_engine",
    "merge_batches",
    "model_weights",
    "load_weights",
    "state_from_data",
    "state_to_data",
]

ENGINES = ("hf",)
"""Engine kinds a worker can build (:func:`make_engine`)."""


# -- plain data ---------------------------------------------------------------------------------------
def state_to_data(state: EnvState) -> dict[str, Any]:
    """An :class:`~deepgrpo_env.state.EnvState` as a dict of ints, strings, the RNG's plain state dict
    and int64 arrays (validated again by ``reset_to`` on arrival)."""
    return {
        "problem_index": int(state.problem_index),
        "problem": dataclasses.asdict(state.problem),
        "prompt_ids": np.asarray(state.prompt_ids),
        "response_ids": np.asarray(state.response_ids),
        "terminated": bool(state.terminated),
        "truncated": bool(state.truncated),
        "rng_state": copy.deepcopy(dict(state.rng_state)),
        "fingerprint": str(state.fingerprint),
    }


def state_from_data(data: dict[str, Any]) -> EnvState:
    """The inverse of :func:`state_to_data` (arrays come back read-only, as the env hands them out)."""
    prompt = np.asarray(data["prompt_ids"], dtype=np.int64)
    response = np.asarray(data["response_ids"], dtype=np.int64)
    prompt.setflags(write=False)
    response.setflags(write=False)
    return EnvState(int(data["problem_index"]), Problem(**data["problem"]), prompt, response,
                    bool(data["terminated"]), bool(data["truncated"]), dict(data["rng_state"]),
                    str(data["fingerprint"]))


def batch_to_data(batch: RolloutBatch) -> dict[str, Any]:
    """A :class:`~deepgrpo_agent.rollout.RolloutBatch` as a dict of arrays, lists and plain states."""
    data = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    data["correct"] = list(batch.correct)
    data["states"] = [state_to_data(s) for s in batch.states]
    return data


def batch_from_data(data: dict[str, Any]) -> RolloutBatch:
    """The inverse of :func:`batch_to_data`; arrays are the receiver's own (writable, as a local batch's),
    not views of the object store's read-only buffers."""
    values: dict[str, Any] = {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in data.items()}
    for key in ("new_ids", "logprobs", "entropies"):
        values[key] = [np.array(x) for x in values[key]]
    correct = np.empty(len(values["correct"]), dtype=object)
    correct[:] = values["correct"]
    values["correct"] = correct
    values["states"] = [state_from_data(s) for s in values["states"]]
    return RolloutBatch(**values)


def merge_batches(parts: Sequence[RolloutBatch], groups: Sequence[int]) -> RolloutBatch:
    """One batch from the shards' batches, in shard order; ``groups[k]`` is shard k's number of start
    sequences, by which later shards' ``group`` ids are offset. The wall times are the slowest shard's."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0, *groups[:-1]])
    temps = [p.temperatures for p in parts]
    return RolloutBatch(
        problem_index=np.concatenate([p.problem_index for p in parts]),
        problem_id=[x for p in parts for x in p.problem_id],
        group=np.concatenate([p.group + off for p, off in zip(parts, offsets)]).astype(np.int64),
        prompt_ids=[x for p in parts for x in p.prompt_ids],
        prefix_ids=[x for p in parts for x in p.prefix_ids],
        new_ids=[x for p in parts for x in p.new_ids],
        logprobs=[x for p in parts for x in p.logprobs],
        entropies=[x for p in parts for x in p.entropies],
        rewards=np.concatenate([p.rewards for p in parts]),
        correct=np.concatenate([p.correct for p in parts]),
        grade_status=[x for p in parts for x in p.grade_status],
        terminated=np.concatenate([p.terminated for p in parts]),
        truncated=np.concatenate([p.truncated for p in parts]),
        generated_tokens=int(sum(p.generated_tokens for p in parts)),
        prefilled_tokens=int(sum(p.prefilled_tokens for p in parts)),
        states=[s for p in parts for s in p.states],
        prefill_s=max(p.prefill_s for p in parts),
        decode_s=max(p.decode_s for p in parts),
        temperatures=None if all(t is None for t in temps) else np.concatenate(
            [np.asarray(t, dtype=np.float64) for t in temps if t is not None]),
    )


def model_weights(model: torch.nn.Module) -> dict[str, Any]:
    """The model's parameters and buffers as numpy arrays (CPU; tied weights once, by name).

    Dtypes numpy lacks (bfloat16) travel as their 16-bit pattern and are named in ``"dtypes"``.
    """
    arrays: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    named = list(model.named_parameters()) + list(model.named_buffers())
    with torch.no_grad():
        for name, tensor in named:
            t = tensor.detach().cpu()
            if t.dtype == torch.bfloat16:
                dtypes[name] = "bfloat16"
                t = t.view(torch.int16)
            arrays[name] = t.contiguous().numpy()
    return {"arrays": arrays, "dtypes": dtypes}


def load_weights(model: torch.nn.Module, weights: dict[str, Any]) -> None:
    """Copies :func:`model_weights` output into ``model`` (same architecture), in place.

    Raises:
        ValueError: If names or shapes differ from the model's.
    """
    targets: dict[str, torch.Tensor] = dict(model.named_parameters())
    targets.update(dict(model.named_buffers()))
    arrays, dtypes = weights["arrays"], weights["dtypes"]
    missing = sorted(set(targets) - set(arrays))
    extra = sorted(set(arrays) - set(targets))
    if missing or extra:
        raise ValueError(f"The broadcast weights do not fit the worker's model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}; learner and workers must build the same architecture.")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # object-store arrays are read-only; we only read them
        for name, array in arrays.items():
            src = torch.from_numpy(array)
            if dtypes.get(name) == "bfloat16":
                src = src.view(torch.bfloat16)
            dst = targets[name]
            if tuple(dst.shape) != tuple(src.shape):
                raise ValueError(f"Weight {name!r} has shape {tuple(src.shape)} on the learner and "
                                 f"{tuple(dst.shape)} on the worker; they must build the same model.")
            dst.copy_(src)


# -- the worker ---------------------------------------------------------------------------------------
@dataclass
class WorkerSpec:
    """What a worker needs to build its model, engine and env (sent once, when it starts).

    Attributes:
        make_env: ``make_env(num_envs) -> vector env`` (picklable) building the learner's training env;
            :class:`RegistryEnv` for a registered id.
        model_config: The learner model's transformers config (``model.config.to_dict()``).
        dtype: Parameter dtype name ("float32", "bfloat16", ...).
        device: Torch device of the worker's engine ("cpu", or "cuda" when the worker has a GPU).
        engine: Engine kind (:data:`ENGINES`).
        threads: Torch threads of the worker.
    """

    make_env: Callable[[int], Any]
    model_config: dict[str, Any]
    dtype: str = "float32"
    device: str = "cpu"
    engine: str = "hf"
    threads: int = 1


@dataclass(frozen=True)
class RegistryEnv:
    """``make_env(num_envs)`` for a registered id: a native vector env with autoreset disabled, as the
    trainer builds its own (``env_kwargs`` hold ``max_response_tokens`` and, for MathReasoning, the
    tokenizer)."""

    env_id: str
    env_kwargs: dict[str, Any]

    def __call__(self, num_envs: int) -> Any:
        import gymnasium as gym

        import envs_registry  # noqa: F401  (registers the ids)

        return gym.make_vec(self.env_id, num_envs=num_envs, autoreset_mode="Disabled", copy=False, **self.env_kwargs)


def make_engine(kind: str, model: torch.nn.Module, vocab_size: int) -> Engine:
    """The worker's generation engine of ``kind`` over ``model`` (the seam for other engines).

    Raises:
        ValueError: For an unknown kind.
    """
    if kind == "hf":
        from deepgrpo_agent.engine.hf import HFEngine

        return HFEngine(model, vocab_size=vocab_size)
    raise ValueError(f"Expected a rollout-worker engine in {ENGINES}, got {kind!r}; other engines plug in at "
                     "deepgrpo_agent.rollout_workers.make_engine.")


def build_model(spec: WorkerSpec) -> torch.nn.Module:
    """A model of the learner's architecture (random init; the first request brings the weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(spec.model_config)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    model: Any = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, spec.dtype))  # type: ignore[no-untyped-call]
    built: torch.nn.Module = model.to(spec.device).eval()
    return built


class RolloutWorker:
    """One rollout worker (a Ray actor): its own model, engine and native vector env.

    Collects with :func:`~deepgrpo_agent.rollout.collect_rollouts` /
    :func:`~deepgrpo_agent.rollout.branch_rollouts` exactly as the trainer does locally.
    """

    def __init__(self, spec: WorkerSpec) -> None:
        import envs_registry  # noqa: F401  (registers the env ids)

        torch.set_num_threads(max(1, int(spec.threads)))
        self.spec = spec
        self.model = build_model(spec)
        self.version = -1
        self.env: Any = None
        self.engine: Engine | None = None

    def pid(self) -> int:
        """The worker's process id (tests kill it)."""
        return os.getpid()

    def _env(self, needed: int) -> tuple[Any, Engine]:
        if self.env is None or self.env.num_envs < needed:
            if self.env is not None:
                self.env.close()
            self.env = self.spec.make_env(needed)
        if self.engine is None:
            self.engine = make_engine(self.spec.engine, self.model, int(self.env.single_action_space.n))
        return self.env, self.engine

    def collect(self, request: dict[str, Any]) -> dict[str, Any]:
        """Runs one shard: syncs weights when their version changed, then roots or branches."""
        from deepgrpo_agent.rollout import branch_rollouts, collect_rollouts

        ray = require_ray()
        t0 = time.perf_counter()
        version, ref = request["weights"]
        if version != self.version:
            load_weights(self.model, ray.get(ref[0]))
            self.version = version
        t1 = time.perf_counter()
        gen = torch.Generator(device="cpu")
        if "seed" in request["generator"]:
            gen.manual_seed(int(request["generator"]["seed"]))
        else:
            gen.set_state(torch.from_numpy(np.array(request["generator"]["state"], dtype=np.uint8)))
        params = SamplingParams(*request["params"])
        repeat, temps = int(request["repeat"]), request["temperatures"]
        if request["kind"] == "roots":
            problems = request["problems"]
            env, engine = self._env(len(problems) * repeat)
            batch = collect_rollouts(env, engine, problems, repeat, params, generator=gen, temperatures=temps)
        else:
            states = [state_from_data(s) for s in request["states"]]
            env, engine = self._env(len(states) * repeat)
            batch = branch_rollouts(env, engine, states, repeat, params, generator=gen, temperatures=temps)
        t2 = time.perf_counter()
        return {"batch": batch_to_data(batch), "generator_state": gen.get_state().numpy(),
                "load_s": t1 - t0, "collect_s": t2 - t1, "pid": os.getpid()}


# -- the learner's side ---------------------------------------------------------------------------------
class RolloutWorkerPool:
    """N rollout workers of one training run, driven by the learner (see the module docstring).

    Args:
        spec: What each worker builds.
        num_workers: N >= 1.
        address: Ray address (:func:`~deepgrpo_agent.ray_runner.connect`); None starts a local cluster.
        cpus_per_worker: CPUs each worker asks Ray for (and its torch threads).
        gpus_per_worker: GPUs each worker asks Ray for; > 0 puts its engine on CUDA.
        max_restarts: Worker failures tolerated within one collection call before giving up.
        timeout_s: A request not answered in this time counts as a failure (the worker is replaced).
    """

    def __init__(
        self,
        spec: WorkerSpec,
        num_workers: int,
        *,
        address: str | None = None,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float = 0.0,
        max_restarts: int = 3,
        timeout_s: float = 1800.0,
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"Expected `num_workers` >= 1, got {num_workers}.")
        self.ray = connect(address)
        self.spec = spec
        self.num_workers = int(num_workers)
        self.max_restarts, self.timeout_s = int(max_restarts), float(timeout_s)
        self._actor = self.ray.remote(RolloutWorker).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)
        self.workers = [self._spawn() for _ in range(self.num_workers)]
        self.version = 0
        self._weights: Any = None
        self.restarts = 0
        self._metrics: dict[str, float] = {}

    @classmethod
    def for_trainer(cls, trainer: Any) -> RolloutWorkerPool:
        """The pool of ``trainer.config.rollout_workers`` workers for ``trainer``'s env and model, with its
        current weights broadcast."""
        cfg = trainer.config
        model = trainer.model
        hf_config = getattr(model, "config", None)
        if hf_config is None or not hasattr(hf_config, "to_dict"):
            raise ValueError(
                f"Expected a transformers model (with a .config) for `rollout_workers` > 0, got "
                f"{type(model).__name__}; workers rebuild the learner's architecture from its config. "
                "Use rollout_workers=0 for other modules."
            )
        env_kwargs = dict(cfg.env_kwargs)
        env_kwargs.setdefault("max_response_tokens", cfg.max_new_tokens)  # as the EnvPool builds its envs
        registered = envs_registry.entry(cfg.env_id)
        if trainer.tokenizer is not None and registered is not None and registered.takes_tokenizer:
            env_kwargs.setdefault("tokenizer", trainer.tokenizer)
        param = next(model.parameters())
        # Workers generate in the run's compute dtype (bf16 rollouts of an fp32-master model, docs/precision.md).
        precision = getattr(trainer, "precision", None)
        dtype = precision.compute_dtype if precision is not None else param.dtype
        gpus = float(cfg.rollout_worker_gpus)
        spec = WorkerSpec(make_env=RegistryEnv(cfg.env_id, env_kwargs), model_config=hf_config.to_dict(),
                          dtype=str(dtype).removeprefix("torch."), device="cuda" if gpus > 0 else "cpu",
                          engine=str(getattr(cfg, "engine", "hf")), threads=1)
        pool = cls(spec, cfg.rollout_workers, address=cfg.ray_address, gpus_per_worker=gpus)
        pool.broadcast(model)
        return pool

    # -- weights --------------------------------------------------------------------------------------
    def broadcast(self, model: torch.nn.Module) -> None:
        """Puts ``model``'s weights in the object store once; workers pull them at their next request."""
        t0 = time.perf_counter()
        weights = self.ray.put(model_weights(model))
        self._weights, self.version = weights, self.version + 1
        self._add("ray/broadcast_s", time.perf_counter() - t0)

    # -- collection -----------------------------------------------------------------------------------
    def roots(self, problems: Sequence[int] | npt.NDArray[np.integer], group_size: int, params: SamplingParams,
              generator: torch.Generator, temperatures: Sequence[float] | npt.NDArray[np.floating] | None = None,
              ) -> RolloutBatch:
        """:func:`~deepgrpo_agent.rollout.collect_rollouts` of ``problems``, split over the workers."""
        items = [int(p) for p in problems]
        return self._collect("roots", items, group_size, params, generator, temperatures)

    def branches(self, states: Sequence[EnvState], branches: int, params: SamplingParams,
                 generator: torch.Generator, temperatures: Sequence[float] | npt.NDArray[np.floating] | None = None,
                 ) -> RolloutBatch:
        """:func:`~deepgrpo_agent.rollout.branch_rollouts` of ``states``, split over the workers."""
        if any(s.done for s in states):
            raise ValueError("Cannot branch from ended states; pick pivots before the episode's end, "
                             "e.g. with RolloutBatch.prefix_state(row, depth).")
        return self._collect("branches", [state_to_data(s) for s in states], branches, params, generator,
                             temperatures)

    def _collect(self, kind: str, items: list[Any], repeat: int, params: SamplingParams,
                 generator: torch.Generator, temperatures: Any) -> RolloutBatch:
        if self._weights is None:
            raise RuntimeError("No weights were broadcast yet; call broadcast(model) first.")
        if not items:
            raise ValueError(f"Expected at least one {'problem' if kind == 'roots' else 'state'}, got none.")
        t0 = time.perf_counter()
        n = self.num_workers
        seeds = torch.randint(0, 2**62, (n - 1,), generator=generator).tolist() if n > 1 else []
        temps = None if temperatures is None else np.asarray(temperatures, dtype=np.float64)
        shards = [idx for idx in np.array_split(np.arange(len(items)), n) if idx.size]
        requests: dict[int, dict[str, Any]] = {}
        for w, idx in enumerate(shards):
            gen = {"state": generator.get_state().numpy()} if w == 0 else {"seed": int(seeds[w - 1])}
            requests[w] = {
                "kind": kind, "repeat": int(repeat),
                "problems" if kind == "roots" else "states": [items[i] for i in idx],
                "params": (params.temperature, params.top_p, params.max_new_tokens),
                "temperatures": None if temps is None else temps[idx].tolist(),
                "generator": gen, "weights": (self.version, [self._weights]),
            }
        results = self._run(requests)
        generator.set_state(torch.from_numpy(np.array(results[0]["generator_state"], dtype=np.uint8)))
        parts = [batch_from_data(results[w]["batch"]) for w in range(len(shards))]
        batch = merge_batches(parts, [idx.size for idx in shards])
        wall = time.perf_counter() - t0
        load = max(r["load_s"] for r in results.values())
        work = max(r["load_s"] + r["collect_s"] for r in results.values())
        self._add("ray/collect_wall_s", wall)
        self._add("ray/weights_load_s", load)
        self._add("ray/worker_collect_s", work - load)
        self._add("ray/gather_s", max(wall - work, 0.0))
        return batch

    def _run(self, requests: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """Sends each request to its worker; replaces dead (or silent) workers and resends theirs."""
        ray = self.ray
        failures = 0
        pending = {self._submit(w, req): w for w, req in requests.items()}
        results: dict[int, dict[str, Any]] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.timeout_s)
            if not ready:  # nobody answered in time: replace every silent worker
                lost = list(pending.items())
                pending.clear()
                for _, w in lost:
                    failures = self._replace(w, failures, TimeoutError(f"no answer in {self.timeout_s:.0f} s"))
                    pending[self._submit(w, requests[w])] = w
                continue
            w = pending.pop(ready[0])
            try:
                results[w] = ray.get(ready[0])
            except ray.exceptions.RayActorError as e:  # the worker died (killed, OOM, node lost)
                failures = self._replace(w, failures, e)
                pending[self._submit(w, requests[w])] = w
        return results

    def _submit(self, w: int, request: dict[str, Any]) -> Any:
        return self.workers[w].collect.remote(request)

    def _replace(self, w: int, failures: int, error: BaseException) -> int:
        failures += 1
        if failures > self.max_restarts:
            raise RuntimeError(
                f"Rollout workers failed {failures} times in one collection call (last: worker {w}: {error}); "
                "giving up. Check the Ray logs (/tmp/ray/session_latest/logs) for why workers die, e.g. memory."
            ) from error
        warnings.warn(f"Rollout worker {w} failed ({type(error).__name__}); starting a new one and "
                      "collecting its share again.", RuntimeWarning, stacklevel=3)
        with contextlib.suppress(Exception):  # already gone
            self.ray.kill(self.workers[w])
        self.workers[w] = self._spawn()
        self.restarts += 1
        self._add("ray/worker_restarts", 1.0)
        return failures

    def _spawn(self) -> Any:
        return self._actor.remote(self.spec)

    # -- metrics and shutdown -----------------------------------------------------------------------
    def _add(self, key: str, value: float) -> None:
        self._metrics[key] = self._metrics.get(key, 0.0) + float(value)

    def pop_metrics(self) -> dict[str, float]:
        """Ray timings since the last call (seconds, summed over calls): ``ray/broadcast_s`` (weights to
        numpy + ``ray.put``), ``ray/weights_load_s`` (slowest worker's pull + copy), ``ray/worker_collect_s``
        (slowest worker's generation), ``ray/gather_s`` (the rest of the wall time: requests, results,
        (de)serialization), their overhead sum ``ray/overhead_s``, and ``ray/worker_restarts``."""
        out = dict(self._metrics)
        self._metrics = {}
        out["ray/overhead_s"] = sum(out.get(k, 0.0) for k in ("ray/broadcast_s", "ray/weights_load_s", "ray/gather_s"))
        return out

    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [int(p) for p in self.ray.get([w.pid.remote() for w in self.workers])]

    def close(self) -> None:
        """Stops the workers (the Ray cluster itself keeps running until this process exits)."""
        for w in self.workers:
            with contextlib.suppress(Exception):  # already gone
                self.ray.kill(w)
        self.workers = []
        self._weights = None
