"""AttnRL (deepgrpo_agent/attnrl.py): steps, FCI by hand, the branch-point and adaptive-sampling rules, a run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepgrpo_agent.attnrl import (
    AttnRLConfig,
    AttnRLTrainer,
    attention_forks,
    branch_plan,
    eager_attention,
    forward_context_influence,
    step_attention,
    step_ends,
)
from tests.agent.test_tree import odd_length_inline
from tests.agent.tiny import tiny_config, tiny_model
from tests.helpers import TinyCodec

VOCAB = TinyCodec().vocab_size


def attn_config(tmp_path, **overrides) -> AttnRLConfig:
    base = tiny_config(tmp_path, max_new_tokens=16)
    fields = {f: getattr(base, f) for f in base.__dataclass_fields__}
    fields["env_kwargs"] = {**base.env_kwargs, "verifier": odd_length_inline}
    fields.update(tree_chains=4, tree_forks=2, tree_branches=2, fci_delta=2, fork_min_distance=0)
    fields.update(overrides)
    return AttnRLConfig(**fields)


# -- steps -----------------------------------------------------------------------------------------


def test_steps_end_after_the_first_delimiter_kind_present_else_per_token():
    para = np.zeros(10, dtype=bool)
    para[7] = True
    line = np.zeros(10, dtype=bool)
    line[[5, 7]] = True
    resp = np.array([3, 5, 3, 7, 3, 3])
    assert step_ends(resp, [para, line]).tolist() == [4, 6]  # after the "\n\n" token (7) only
    assert step_ends(np.array([3, 5, 3, 3]), [para, line]).tolist() == [2, 4]  # no "\n\n": "\n" (5)
    assert step_ends(np.array([3, 3, 3]), [para, line]).tolist() == [1, 2, 3]  # neither: one step per token
    assert step_ends(np.array([3, 7]), [para, line]).tolist() == [2]  # a final delimiter ends the last step


# -- FCI -------------------------------------------------------------------------------------------


def test_step_attention_and_fci_by_hand():
    rng = np.random.default_rng(0)
    layers, heads, t = 2, 3, 9
    a = rng.random((layers, heads, t, t))
    ranges = [(0, 2), (2, 3), (3, 5), (5, 6), (6, 8), (8, 9)]  # prompt, then 5 steps
    alpha = step_attention(torch.from_numpy(a), ranges).numpy()
    for q, (qa, qb) in enumerate(ranges):
        for k, (ka, kb) in enumerate(ranges):
            assert alpha[1, 2, q, k] == pytest.approx(a[1, 2, qa:qb, ka:kb].mean())
    delta = 2
    fci = forward_context_influence(torch.from_numpy(a), ranges, delta)
    hand = np.zeros(len(ranges))
    for k in range(len(ranges)):
        per_head = [sum(alpha[l_, h, q, k] for q in range(k + delta, len(ranges)))
                    for l_ in range(layers) for h in range(heads)]
        hand[k] = max(per_head)
    hand[:2] = 0.0  # the prompt and the first response step
    np.testing.assert_allclose(fci, hand, rtol=1e-12)
    assert fci[-delta:].tolist() == [0.0, 0.0]  # no step lies delta or more after the last two
    with pytest.raises(ValueError, match="ranges inside"):
        step_attention(torch.from_numpy(a), [(0, 10)])


def test_eager_attention_gives_row_stochastic_weights_and_restores_the_implementation():
    model = tiny_model(VOCAB, num_attention_heads=2, num_key_value_heads=1).eval()
    before = model.config._attn_implementation
    ids = torch.randint(2, VOCAB, (2, 7))
    with torch.no_grad():
        logits = model(ids).logits
        with eager_attention(model):
            out = model(ids, output_attentions=True, use_cache=False)
    assert model.config._attn_implementation == before
    torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-5)
    for layer in out.attentions:
        assert layer.shape == (2, 2, 7, 7)
        torch.testing.assert_close(layer.sum(-1), torch.ones(2, 2, 7))
        assert torch.all(layer.triu(1) == 0)  # causal


# -- branch points and adaptive sampling -----------------------------------------------------------


def test_branch_points_take_the_earliest_spaced_top_quantile_steps():
    starts = np.array([0, 10, 20, 30, 40, 50])
    fci = np.array([0.0, 0.9, 0.1, 0.8, 0.85, 0.0])
    # quantile 0.5 -> threshold 0.45: steps 1, 3, 4 qualify; earliest first.
    assert attention_forks(fci, starts, prompt_len=5, count=2, min_distance=0, quantile=0.5) == [1, 3]
    # 15 tokens apart: 1 (at 15 >= 15) then 3 (20 from 1); 4 is 10 from 3.
    assert attention_forks(fci, starts, prompt_len=5, count=3, min_distance=15, quantile=0.5) == [1, 2, 3]
    # A start 25 tokens in is needed: step 1 (at 15) fails it; 3 qualifies, 4 is too close; step 1 then 2 fill in.
    assert attention_forks(fci, starts, prompt_len=5, count=3, min_distance=25, quantile=0.5) == [1, 2, 3]
    # Threshold 0 with positive scores: the smallest positive one.
    zeros = np.array([0.0, 0.0, 0.0, 0.3, 0.0, 0.0])
    assert attention_forks(zeros, starts, prompt_len=0, count=1, min_distance=0, quantile=0.5) == [3]
    # Never the first step; repeats when the response has fewer steps than asked.
    assert attention_forks(np.array([5.0, 0.0]), np.array([0, 4]), prompt_len=0, count=2, min_distance=0,
                           quantile=0.8) == [1, 1]
    assert attention_forks(np.array([1.0]), np.array([0]), prompt_len=0, count=2, min_distance=0, quantile=0.8) == []


@pytest.mark.parametrize(("c", "k"), [(0, 6), (1, 6), (2, 5), (3, 4), (4, 4), (5, 3)])
def test_adaptive_sampling_budget_and_minority_first(c, k):
    correct = np.zeros(6, dtype=bool)
    correct[[5, 0, 3, 1, 4][:c]] = True
    plan = branch_plan(correct, np.random.default_rng(0), above_mean_fci=False)
    assert plan is not None and len(plan) == k == math.ceil(6 * math.exp(-c / 6))
    minority = np.flatnonzero(~correct if c >= 3 else correct)
    assert set(minority) <= set(plan.tolist())


def test_all_correct_prompts_branch_only_above_the_running_mean_fci():
    correct = np.ones(6, dtype=bool)
    assert branch_plan(correct, np.random.default_rng(0), above_mean_fci=False) is None
    assert branch_plan(correct, np.random.default_rng(0), above_mean_fci=True).tolist() == [0, 1, 2]


def test_config_validation():
    with pytest.raises(ValueError, match="fci_delta"):
        AttnRLConfig(fci_delta=0)
    with pytest.raises(ValueError, match="tree_rounds"):
        AttnRLConfig(tree_rounds=2)
    with pytest.raises(ValueError, match="segment"):
        AttnRLConfig(segment="sentence")  # type: ignore[arg-type]
    assert (AttnRLConfig().tree_chains, AttnRLConfig().tree_forks, AttnRLConfig().tree_branches) == (6, 2, 2)


# -- the trainer -----------------------------------------------------------------------------------


def test_rows_come_from_branched_responses_only_and_forks_start_steps(tmp_path):
    trainer = AttnRLTrainer(attn_config(tmp_path), model=tiny_model(VOCAB))
    rollouts = trainer.collect()
    samples, metrics = trainer.compute_advantages(rollouts)
    roots = rollouts.roots[0]
    steps = trainer.chain_steps(roots)
    for fork in rollouts.forks:
        assert fork.path in rollouts.branched
        starts, _ = steps[fork.path]
        assert fork.depth in starts[1:].tolist()  # the start of a step, never the first
    per_chain = np.bincount([f.path for f in rollouts.forks], minlength=len(roots))
    assert per_chain.max() <= 2 and all(per_chain[r] == 0 for r in range(len(roots)) if r not in rollouts.branched)
    # Rows: every path of a branched response's tree (the chain itself and its continuations) of the
    # prompts that were neither dropped nor filtered; never an unbranched chain.
    rows = [i for i, p in enumerate(rollouts.paths) if p.parent >= 0 or i in rollouts.branched]
    kept_groups = {rollouts.paths[i].group for i in rows} - rollouts.dropped
    expected = [i for i in rows if rollouts.paths[i].group in kept_groups]
    filtered = metrics["attn/zero_signal_prompts"]
    assert len(samples) <= len(expected) and (len(samples) == len(expected) or filtered > 0)
    assert metrics["tree/trained_rows"] == len(samples)


def test_two_step_run_trains_and_resumes_its_state(tmp_path):
    trainer = AttnRLTrainer(attn_config(tmp_path, total_steps=2, save_every=1), model=tiny_model(VOCAB))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    metrics = trainer.train()
    assert trainer.step == 2 and math.isfinite(metrics["loss/total"])
    assert [n for n, p in trainer.model.named_parameters() if torch.equal(p, before[n])] == []
    for key in ("attn/fci_mean", "attn/dropped_prompts", "attn/branched_responses", "tree/forks",
                "pivot/branch_success_rate", "budget/generated_tokens"):
        assert key in metrics
    resumed = AttnRLTrainer(attn_config(tmp_path, total_steps=3, resume=True), model=tiny_model(VOCAB))
    assert resumed.step == 2
    assert resumed.ads_rng.bit_generator.state == trainer.ads_rng.bit_generator.state
    assert (resumed.fci_sum, resumed.fci_count) == (trainer.fci_sum, trainer.fci_count)
