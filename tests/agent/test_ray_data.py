"""What rollout workers send and receive, without Ray: states and batches as plain data, shards merged
back into one batch, weights as numpy, and the errors when Ray is missing."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs_registry  # noqa: F401
from deepgrpo_agent.config import GRPOConfig
from deepgrpo_agent.engine.hf import HFEngine
from deepgrpo_agent.engine.protocol import SamplingParams
from deepgrpo_agent.rollout import branch_rollouts, collect_rollouts
from deepgrpo_agent.rollout_workers import (
    batch_from_data,
    batch_to_data,
    load_weights,
    merge_batches,
    model_weights,
    state_from_data,
    state_to_data,
)
from tests.agent.tiny import tiny_model

ENV = {"level": 1, "max_operand": 5, "max_response_tokens": 6}
PLAIN = (dict, list, tuple, str, int, float, bool, bytes, type(None), np.ndarray, np.generic)


def _env(n: int) -> Any:
    return gym.make_vec("Arithmetic-v0", num_envs=n, autoreset_mode="Disabled", copy=False, **ENV)


def _engine(env: Any) -> HFEngine:
    vocab = int(env.single_action_space.n)
    return HFEngine(tiny_model(vocab, seed=1), vocab_size=vocab)


def _plain(value: Any, where: str = "batch") -> None:
    assert isinstance(value, PLAIN), f"{where} is a {type(value).__name__}"
    if isinstance(value, dict):
        for k, v in value.items():
            _plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _plain(v, f"{where}[{i}]")


def _same(a: Any, b: Any) -> None:
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == np.asarray(b).dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    else:
        assert a == b


def test_states_and_batches_travel_as_plain_data_and_come_back_equal() -> None:
    env = _env(8)
    params = SamplingParams(1.0, 1.0, 6)
    batch = collect_rollouts(env, _engine(env), [3, 9], 4, params, generator=torch.Generator().manual_seed(0),
                             temperatures=[0.7, 1.3])
    pivot = batch.prefix_state(1, 2)
    assert state_from_data(pickle.loads(pickle.dumps(state_to_data(pivot)))) == pivot
    data = batch_to_data(batch)
    _plain(data)
    back = batch_from_data(pickle.loads(pickle.dumps(data)))
    for name in batch.__dataclass_fields__:
        _same(getattr(batch, name), getattr(back, name))
    back.rewards[0] = 5.0  # the receiver owns its arrays (object-store buffers are read-only)
    # A restored state branches exactly like the original.
    runs = [branch_rollouts(env, _engine(env), [s], 3, params, generator=torch.Generator().manual_seed(4))
            for s in (pivot, back.prefix_state(1, 2))]
    assert [x.tolist() for x in runs[0].new_ids] == [x.tolist() for x in runs[1].new_ids]


def test_shards_merge_into_one_batch_with_global_group_ids() -> None:
    env = _env(12)
    engine, params = _engine(env), SamplingParams(1.0, 1.0, 6)
    parts = [collect_rollouts(env, engine, problems, 3, params, generator=torch.Generator().manual_seed(k),
                              temperatures=temps)
             for k, (problems, temps) in enumerate((([1, 2], [1.0, 0.5]), ([7], [2.0])))]
    merged = merge_batches(parts, [2, 1])
    assert len(merged) == 9
    assert merged.group.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert merged.problem_index.tolist() == [1, 1, 1, 2, 2, 2, 7, 7, 7]
    assert merged.temperatures is not None and merged.temperatures.tolist() == [1.0] * 3 + [0.5] * 3 + [2.0] * 3
    assert merged.generated_tokens == sum(p.generated_tokens for p in parts) == sum(len(x) for x in merged.new_ids)
    assert merged.prefilled_tokens == parts[0].prefilled_tokens + parts[1].prefilled_tokens
    assert merged.decode_s == max(p.decode_s for p in parts)
    assert [s.problem_index for s in merged.states] == merged.problem_index.tolist()
    assert merge_batches(parts[:1], [2]) is parts[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_travel_as_numpy_and_load_into_a_fresh_model(dtype: torch.dtype) -> None:
    learner, worker = tiny_model(20, seed=0).to(dtype), tiny_model(20, seed=1).to(dtype)
    weights = pickle.loads(pickle.dumps(model_weights(learner)))
    _plain(weights)
    assert all(isinstance(a, np.ndarray) for a in weights["arrays"].values())
    load_weights(worker, weights)
    a, b = learner.state_dict(), worker.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="same"):
        load_weights(tiny_model(20, hidden=16).to(dtype), weights)


def test_tied_embeddings_travel_once() -> None:
    model = tiny_model(20, tie_word_embeddings=True)
    names = model_weights(model)["arrays"]
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    fresh = tiny_model(20, seed=3, tie_word_embeddings=True)
    load_weights(fresh, model_weights(model))
    assert torch.equal(fresh.lm_head.weight, model.lm_head.weight)


def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError


def test_compare_ray_without_ray_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepgrpo_agent.cli import main

    _no_ray(monkeypatch)
    with pytest.raises(SystemExit, match=r"needs Ray, which is not installed: pip install 'deepgrpo\[ray\]'"):
        main(["compare", "--output-dir", str(tmp_path), "--ray"])


def test_rollout_workers_without_ray_say_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepgrpo_agent.trainer import GRPOTrainer

    _no_ray(monkeypatch)
    cfg = GRPOConfig(env_id="Arithmetic-v0", env_kwargs=ENV, model="random-tiny", device="cpu", prompts_per_step=2,
                     group_size=2, max_new_tokens=6, eval_every=0, eval_problems=4, pass_k=0, tensorboard=False,
                     progress=False, output_dir=str(tmp_path), rollout_workers=2)
    with pytest.raises(ImportError, match=r"pip install 'deepgrpo\[ray\]'"):
        GRPOTrainer(cfg).train_step()


def test_rollout_worker_fields_are_checked() -> None:
    with pytest.raises(ValueError, match="rollout_workers"):
        GRPOConfig(rollout_workers=-1)
    with pytest.raises(ValueError, match="rollout_worker_gpus"):
        GRPOConfig(rollout_worker_gpus=-0.5)
