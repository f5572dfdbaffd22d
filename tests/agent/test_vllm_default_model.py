"""VLLMEngine on the default model (SmolLM2-135M-Instruct, fp32) and a real env (SVAMP): completions end
where the env ends them, and log-probs match the HF forward before and after a weight sync.

Marked ``vllm``; skipped with a reason when vLLM is not importable (CI installs it: scripts/test.sh).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs_registry  # noqa: F401  (registers the ids)
from deepgrpo_agent.engine.protocol import SamplingParams
from deepgrpo_agent.engine.vllm import VLLMEngine, vllm_available
from deepgrpo_agent.policy import load_policy
from deepgrpo_agent.rollout import collect_rollouts
from tests.agent.test_vllm import LOGPROB_ATOL, reference_logprobs

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed (bash scripts/setup.sh --vllm)"),
]

NEW_TOKENS = 24


def worst_error(model, batch, vocab: int) -> float:
    return max(
        float(np.abs(reference_logprobs(model, batch.prompt_ids[j], batch.new_ids[j], 1.0, vocab) - batch.logprobs[j]).max())
        for j in range(len(batch))
    )


def test_default_model_rollouts_agree_with_the_env_and_the_trained_model():
    model, tokenizer = load_policy("default", device=torch.device("cpu"), dtype=torch.float32)
    venv = gym.make_vec("MathReasoning-SVAMP-v0", num_envs=4, autoreset_mode="Disabled", copy=False,
                        tokenizer=tokenizer, max_response_tokens=NEW_TOKENS)
    vocab = int(venv.single_action_space.n)
    stops = set(venv.unwrapped.codec.stop_token_ids)
    with VLLMEngine(model, vocab_size=vocab, max_model_len=512 + NEW_TOKENS, kv_cache_gb=0.5) as engine:
        params = SamplingParams(max_new_tokens=NEW_TOKENS)
        batch = collect_rollouts(venv, engine, [0, 1], 2, params, generator=torch.Generator().manual_seed(0))
        assert batch.engine_disagreements == 0
        for j, ids in enumerate(batch.new_ids):
            assert not stops & set(ids[:-1].tolist())
            assert bool(batch.terminated[j]) == (ids[-1] in stops) and (batch.terminated[j] or len(ids) == NEW_TOKENS)
        assert batch.prefilled_tokens < sum(len(p) for p in batch.prompt_ids)  # copies reuse the cached prompt
        assert worst_error(model, batch, vocab) <= LOGPROB_ATOL

        # One optimizer step on the sampled tokens, then the sync the trainer does after every step.
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ids = torch.from_numpy(np.concatenate([batch.prompt_ids[0], batch.new_ids[0]]))[None]
        n = len(batch.prompt_ids[0])
        loss = -model(ids).logits[0, n - 1 : -1, :vocab].log_softmax(-1).gather(
            1, torch.from_numpy(batch.new_ids[0])[:, None]).sum()
        loss.backward()
        opt.step()
        model.eval()
        engine.sync_weights(model)
        after = collect_rollouts(venv, engine, [0, 1], 2, params, generator=torch.Generator().manual_seed(1))
        assert after.engine_disagreements == 0
        assert worst_error(model, after, vocab) <= LOGPROB_ATOL
    venv.close()
