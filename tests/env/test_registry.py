"""Every registered id: Gymnasium's and SB3's checkers, our contract, make/make_vec, errors."""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium as gym
import pytest

import envs_registry
from deepgrpo_env import ReasoningEnv, ReasoningVectorEnv
from deepgrpo_env.checker import check_reasoning_env

IDS = list(envs_registry.list_envs())


@pytest.fixture
def restore_registry():
    saved = dict(gym.envs.registry)
    yield
    gym.envs.registry.clear()
    gym.envs.registry.update(saved)


@pytest.mark.parametrize("env_id", IDS)
def test_checkers_pass_on_every_id(env_id):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(env_id, max_response_tokens=32)
    check_reasoning_env(env)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SB3 warns about non-image int Boxes; the check itself must pass
        sb3_check_env(gym.make(env_id, max_response_tokens=32))
    env.close()


def test_make_returns_snapshotable_env_and_vector_env():
    env = gym.make("MathReasoning-v0")
    assert isinstance(env.unwrapped, ReasoningEnv)
    env.reset(seed=0)
    state = env.snapshot()  # directly on what gym.make returns
    env.step(5)
    env.reset_to(state)
    venv = gym.make_vec("MathReasoning-v0", num_envs=8)
    assert isinstance(venv, ReasoningVectorEnv) and venv.num_envs == 8
    venv.reset(seed=0)
    states = venv.snapshot(indices=[0, 3])
    venv.reset_to(states, indices=[5, 6])


def test_mawps_singleop_id_holds_exactly_the_one_operation_problems():
    from deepgrpo_env.datasets import load_dataset

    venv = gym.make_vec("MathReasoning-MAWPS-SingleOp-v0", num_envs=2)
    singleop = load_dataset("mawps", "test", subset="singleop")
    assert venv.num_problems == len(singleop) == 562
    assert [venv.problem_id(i) for i in (0, 561)] == [singleop[0].id, singleop[-1].id]
    venv.close()


def test_overrides_reach_the_env():
    env = gym.make("MathReasoning-SVAMP-v0", max_response_tokens=17, prompt="gsm8k-hash")
    _, info = env.reset(options={"problem_index": 0})
    assert env.unwrapped.limits.max_response_tokens == 17
    text = env.unwrapped.codec.decode(env.unwrapped.core.prompts[0].tolist())
    assert "####" in text and info["reference"] == "145"


def test_envs_registry_prefix_works_without_prior_import():
    code = (
        "import gymnasium as gym\n"
        "env = gym.make('envs_registry:MathReasoning-SVAMP-v0')\n"
        "obs, info = env.reset(seed=0)\n"
        "print(type(env.unwrapped).__name__, info['problem_id'].split('-')[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ReasoningEnv", "svamp"]


def test_list_and_unknown_ids():
    listed = envs_registry.list_envs()
    assert "MathReasoning-v0" in listed and all(listed.values())
    assert envs_registry.suggest("MathReasoning-SVAMPP-v0")[0] == "MathReasoning-SVAMP-v0"
    with pytest.raises(ValueError, match="Did you mean 'MathReasoning-MATH500-v0'"):
        envs_registry.make("MathReasoning-MATH-500-v0")
    with pytest.raises(gym.error.NameNotFound, match="Did you mean"):
        gym.make("MathReasoning-SVAMPP-v0")


def test_registration_is_idempotent(restore_registry):
    import importlib

    importlib.reload(envs_registry)
    assert all(i in gym.envs.registry for i in IDS)
