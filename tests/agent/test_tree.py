"""Tree baselines (TreeRL / uniform branching): fork masking, segment values and advantages, rows, budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepgrpo_agent.config import GRPOConfig
from deepgrpo_agent.tree import (
    TreeConfig,
    TreeRLTrainer,
    UniformTreeConfig,
    UniformTreeTrainer,
    allowed_forks,
    build_tree,
    node_values,
    segment_advantages,
    select_forks,
    stop_index,
    token_texts,
)
from tests.agent.tiny import tiny_config, tiny_model
from tests.helpers import TinyCodec

VOCAB = TinyCodec().vocab_size


def odd_length_inline(response: str, reference: str) -> float:
    """tiny.odd_length, graded in-process (no grader worker processes: keeps these tests fast)."""
    return float(len(response) % 2)


odd_length_inline.inline_safe = True  # type: ignore[attr-defined]


def always_one_inline(response: str, reference: str) -> float:
    """Every tree's leaves agree under this reward."""
    return 1.0


always_one_inline.inline_safe = True  # type: ignore[attr-defined]


def tree_config(tmp_path, cls=TreeConfig, **overrides) -> TreeConfig:
    base = tiny_config(tmp_path, max_new_tokens=16)
    fields = {f: getattr(base, f) for f in base.__dataclass_fields__}
    fields["env_kwargs"] = {**base.env_kwargs, "verifier": odd_length_inline}
    fields.update(tree_chains=3, tree_forks=2, tree_branches=2, skip_last_tokens=2, stop_words=())
    fields.update(overrides)
    return cls(**fields)


# -- fork positions ------------------------------------------------------------------------------------


def test_stop_index_finds_the_token_completing_a_stop_word():
    codec = TinyCodec()
    texts = token_texts(codec.decode, VOCAB)
    response = np.array(codec.encode("12 so the answer is 3"))
    assert stop_index(response, texts, ("answer", "conclusion")) == "12 so the answer".index("r")
    assert stop_index(response, texts, ()) == len(response)
    assert stop_index(response, texts, ("conclusion",)) == len(response)
    # Case-insensitive, and a word straddling multi-character tokens stops at the token that completes it.
    pieces = ["The ", "ANS", "wer", " 5"]
    assert stop_index(np.arange(4), [p.lower() for p in pieces], ("Answer",)) == 2
    assert stop_index(np.arange(4), [p.lower() for p in pieces], ("the",)) == 0


@pytest.mark.parametrize(
    ("length", "start", "stop", "lo", "hi"),
    [
        (40, 1, 40, 2, 30),  # first 5% (2 tokens) and last 10 skipped
        (20, 1, 20, 1, 10),  # 5% of 20 = 1 token; position 0 is never a fork anyway
        (11, 1, 11, 0, 0),  # nothing left: short responses get no fork
        (40, 15, 40, 15, 30),  # later rounds fork only what the previous round generated
        (40, 1, 20, 2, 20),  # nothing at or after the stop word's token
    ],
)
def test_allowed_forks_masks(length, start, stop, lo, hi):
    mask = allowed_forks(length, start=start, stop=stop, skip_first_fraction=0.05, skip_last_tokens=10)
    expected = np.zeros(length, dtype=bool)
    expected[lo:hi] = True
    np.testing.assert_array_equal(mask, expected)


def test_entropy_selection_takes_highest_surprisal_among_allowed_only():
    surprisal = np.array([9.0, 0.1, 3.0, 0.5, 2.0, 3.0, 8.0])
    allowed = np.array([False, True, True, True, True, True, False])  # the 9 and 8 are masked out
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(select_forks(surprisal, allowed, 2, "entropy", rng), [2, 5])
    np.testing.assert_array_equal(select_forks(surprisal, allowed, 3, "entropy", rng), [2, 4, 5])
    # Fewer allowed positions than N: all of them; none allowed: no fork.
    few = np.zeros(7, dtype=bool)
    few[3] = True
    np.testing.assert_array_equal(select_forks(surprisal, few, 2, "entropy", rng), [3])
    assert select_forks(surprisal, np.zeros(7, dtype=bool), 2, "entropy", rng).size == 0


def test_uniform_selection_draws_distinct_allowed_positions():
    allowed = np.zeros(30, dtype=bool)
    allowed[[4, 9, 10, 17, 22]] = True
    rng = np.random.default_rng(0)
    seen: set[int] = set()
    for _ in range(200):
        picks = select_forks(np.zeros(30), allowed, 2, "uniform", rng)
        assert picks.size == 2 and picks[0] < picks[1] and allowed[picks].all()
        seen.update(picks.tolist())
    assert seen == {4, 9, 10, 17, 22}
    np.testing.assert_array_equal(select_forks(np.zeros(30), allowed, 9, "uniform", rng), [4, 9, 10, 17, 22])


# -- the segment tree ----------------------------------------------------------------------------------


def test_one_level_tree_values_and_advantages():
    # Chain 0 (reward 0) forked at 4 into branches 2 and 3 (reward 1 each); chain 1 (reward 1) unforked.
    tree = build_tree(parents=[-1, -1, 0, 0], forks=[0, 0, 4, 4], lengths=[10, 8, 9, 12])
    np.testing.assert_array_equal(tree.seq, [0, 0, 1, 2, 3])
    np.testing.assert_array_equal(tree.start, [0, 4, 0, 4, 4])
    np.testing.assert_array_equal(tree.end, [4, 10, 8, 9, 12])
    np.testing.assert_array_equal(tree.parent, [-1, 0, -1, 0, 0])
    np.testing.assert_array_equal(tree.leaf_node, [1, 2, 3, 4])
    rewards = np.array([0.0, 1.0, 1.0, 1.0])
    values, leaves = node_values(tree, rewards)
    np.testing.assert_allclose(values, [2 / 3, 0, 1, 1, 1])
    np.testing.assert_array_equal(leaves, [3, 1, 1, 1, 1])
    adv = segment_advantages(values, leaves, tree.parent, root_value=0.75)
    # R(s) = [(V(s) - V(root)) + (V(s) - V(parent))] / sqrt(|leaves(s)|), V(root) = 3/4
    expected = [2 * (2 / 3 - 3 / 4) / math.sqrt(3), -3 / 4 - 2 / 3, 2 * (1 - 3 / 4), 1 / 4 + 1 / 3, 1 / 4 + 1 / 3]
    np.testing.assert_allclose(adv, expected)


def test_two_level_tree_values_and_advantages():
    # 0 --5--> {1, 2}; round 2: 1 --12--> {3, 4}, 2 --8--> {5, 6}
    tree = build_tree(parents=[-1, 0, 0, 1, 1, 2, 2], forks=[0, 5, 5, 12, 12, 8, 8],
                      lengths=[20, 18, 15, 16, 19, 14, 17])
    np.testing.assert_array_equal(tree.seq, [0, 0, 1, 1, 2, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(tree.start, [0, 5, 5, 12, 5, 8, 12, 12, 8, 8])
    np.testing.assert_array_equal(tree.end, [5, 20, 12, 18, 8, 15, 16, 19, 14, 17])
    np.testing.assert_array_equal(tree.parent, [-1, 0, 0, 2, 0, 4, 2, 2, 4, 4])
    rewards = np.array([0, 1, 0, 1, 1, 0, 1], dtype=np.float64)
    values, leaves = node_values(tree, rewards)
    np.testing.assert_allclose(values, [4 / 7, 0, 1, 1, 1 / 3, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(leaves, [7, 1, 3, 1, 3, 1, 1, 1, 1, 1])
    adv = segment_advantages(values, leaves, tree.parent, root_value=4 / 7)
    s3 = math.sqrt(3)
    expected = [0.0, -8 / 7, (6 / 7) / s3, 3 / 7, -(10 / 21) / s3, -19 / 21, 3 / 7, 3 / 7, -19 / 21, 23 / 21]
    np.testing.assert_allclose(adv, expected, atol=1e-12)


def test_build_tree_rejects_inconsistent_forks():
    with pytest.raises(ValueError, match="fork"):
        build_tree(parents=[-1, 0], forks=[0, 10], lengths=[10, 12])  # fork at the parent's end
    with pytest.raises(ValueError, match="precede"):
        build_tree(parents=[1, -1], forks=[3, 0], lengths=[8, 8])
    with pytest.raises(ValueError, match="position 0"):
        build_tree(parents=[-1], forks=[2], lengths=[8])


# -- the trainer ---------------------------------------------------------------------------------------


def test_segments_partition_every_leaf_and_branches_start_before_the_fork(tmp_path):
    trainer = TreeRLTrainer(tree_config(tmp_path, tree_rounds=2, tree_weighting="segments"), model=tiny_model(VOCAB))
    seen: dict[str, list] = {}
    original = trainer.tree_samples

    def spy(paths):
        seen["paths"] = list(paths)
        samples, metrics = original(paths)
        seen["samples"] = samples
        return samples, metrics

    trainer.tree_samples = spy  # type: ignore[method-assign]
    samples, metrics = trainer.collect_samples()
    paths = seen["paths"]
    assert metrics["tree/forks"] > 0 and any(p.parent >= 0 and paths[p.parent].parent >= 0 for p in paths)
    # Branches restart from the parent's state before the fork token: same prompt and prefix.
    for p in paths:
        state = p.batch.states[p.row]
        assert state.response_ids.shape[0] == p.response.shape[0]
        np.testing.assert_array_equal(state.response_ids, p.response)
        if p.parent >= 0:
            parent = paths[p.parent]
            np.testing.assert_array_equal(p.batch.prefix_ids[p.row], parent.response[: p.fork])
            np.testing.assert_array_equal(state.prompt_ids, parent.batch.states[parent.row].prompt_ids)
            assert parent.fork < p.fork < parent.response.shape[0]
    # Rows: every generated token exactly once, each leaf = the concatenation of its root-to-leaf segments.
    by_target: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for c, t in zip(samples.contexts, samples.targets):
        by_target.setdefault(len(c), []).append((c, t))
    for p in paths:
        prompt = p.batch.prompt_ids[p.row]
        response = p.response
        pos = 0
        while pos < response.shape[0]:  # walk the leaf through the rows whose context is its prefix
            context = np.concatenate([prompt, response[:pos]])
            match = [t for c, t in by_target.get(len(context), [])
                     if np.array_equal(c, context) and np.array_equal(t, response[pos: pos + len(t)])]
            assert len(match) == 1, f"no unique segment at position {pos}"
            pos += len(match[0])
        assert pos == response.shape[0]
    assert sum(len(t) for t in samples.targets) == sum(len(p.batch.new_ids[p.row]) for p in paths)
    # Budget: roots + branches generated tokens, roots and branch rollouts counted apart.
    b = trainer.budget
    assert b.generated_tokens == sum(len(t) for t in samples.targets)
    assert b.root_rollouts == 2 * 3 and b.branch_rollouts == 2 * metrics["tree/forks"]
    assert b.branch_rollouts == sum(p.parent >= 0 for p in paths)
    assert metrics["pivot/branch_generated_tokens"] == b.generated_tokens - metrics["rollout/generated_tokens"]
    assert metrics["tree/leaves_per_prompt"] == len(paths) / 2
    assert samples.advantages.shape == (len(samples),) and (samples.streams == 0).all()


def test_round_one_forks_at_most_n_per_chain_and_only_allowed_positions(tmp_path):
    trainer = TreeRLTrainer(tree_config(tmp_path, skip_last_tokens=4, skip_first_fraction=0.25),
                            model=tiny_model(VOCAB))
    problems = trainer.next_problems(2)
    from deepgrpo_agent.rollout import collect_rollouts
    from deepgrpo_agent.tree import TreePath

    roots = collect_rollouts(trainer.env, trainer.engine, problems, 3, trainer.sampling(), generator=trainer.generator)
    paths = [TreePath(int(roots.group[r]), r, -1, 0, roots, r) for r in range(len(roots))]
    forks, _ = trainer.choose_forks(paths, range(len(paths)))
    per_chain = np.bincount([f.path for f in forks], minlength=len(paths))
    assert per_chain.max() <= 2
    for f in forks:
        n = paths[f.path].response.shape[0]
        assert math.ceil(0.25 * n) <= f.depth < n - 4
        surprisal = -roots.logprobs[f.path]
        allowed = allowed_forks(n, start=1, stop=n, skip_first_fraction=0.25, skip_last_tokens=4)
        # The chosen ones are among the highest-surprisal allowed tokens.
        assert surprisal[f.depth] >= np.sort(surprisal[allowed])[-per_chain[f.path]] - 1e-6


@pytest.mark.parametrize(("algo", "weighting"), [("treerl", "paths"), ("uniform-tree", "segments")])
def test_two_step_smoke_run(tmp_path, algo, weighting):
    cls, trainer_cls = (TreeConfig, TreeRLTrainer) if algo == "treerl" else (UniformTreeConfig, UniformTreeTrainer)
    trainer = trainer_cls(tree_config(tmp_path, cls=cls, total_steps=2, save_every=1, tree_weighting=weighting),
                          model=tiny_model(VOCAB))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    metrics = trainer.train()
    assert trainer.step == 2 and math.isfinite(metrics["loss/total"])
    unchanged = [n for n, p in trainer.model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []
    for key in ("tree/forks", "tree/leaves_per_prompt", "tree/zero_variance_fraction", "tree/leaf_accuracy",
                "pivot/ratio_mean", "pivot/ratio_hist_4", "pivot/branch_success_rate",
                "pivot/unrecoverable_fraction", "pivot/branch_generated_tokens", "rollout/entropy"):
        assert key in metrics
    assert sum(metrics[f"pivot/ratio_hist_{i}"] for i in range(5)) == metrics["tree/forks"] > 0
    if weighting == "segments":
        assert metrics["budget/generated_tokens"] == metrics["budget/trained_tokens"]  # every token trained once
    else:  # every path's whole response is a row: shared prefixes are trained once per leaf
        assert metrics["budget/trained_tokens"] > metrics["budget/generated_tokens"]
    resumed = trainer_cls(tree_config(tmp_path, cls=cls, total_steps=3, resume=True), model=tiny_model(VOCAB))
    assert resumed.step == 2
    assert resumed.fork_rng.bit_generator.state == trainer.fork_rng.bit_generator.state


def test_drop_removes_trees_whose_leaves_all_agree(tmp_path):
    cfg = tree_config(tmp_path, dynamic_sampling="drop")
    cfg.env_kwargs["verifier"] = always_one_inline
    trainer = TreeRLTrainer(cfg, model=tiny_model(VOCAB))
    samples, metrics = trainer.collect_samples()
    assert len(samples) == 0 and metrics["tree/zero_variance_fraction"] == 1.0 and metrics["tree/forks"] > 0
    assert math.isfinite(trainer.update(samples)["loss/total"])


def test_tree_config_validation(tmp_path):
    with pytest.raises(ValueError, match="tree_branches"):
        TreeConfig(tree_branches=0)
    with pytest.raises(ValueError, match="skip_first_fraction"):
        TreeConfig(skip_first_fraction=1.0)
    with pytest.raises(ValueError, match="dynamic_sampling"):
        TreeConfig(dynamic_sampling="refill")
    with pytest.raises(ValueError, match="fork_selection"):
        TreeConfig(fork_selection="attention")  # type: ignore[arg-type]
    assert UniformTreeConfig().fork_selection == "uniform"
    with pytest.raises(TypeError, match="TreeConfig"):
        TreeRLTrainer(tiny_config(tmp_path), model=tiny_model(VOCAB))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uniform"):
        UniformTreeTrainer(tree_config(tmp_path), model=tiny_model(VOCAB))
    assert isinstance(tree_config(tmp_path), GRPOConfig)


# -- path weighting (TreeRL's rows) and the trainer's advantages on a fixed tree ----------------------------


def fixed_tree_paths():
    """The one-level tree of test_one_level_tree_values_and_advantages as TreePaths of one prompt.

    Chain 0 (10 tokens, reward 0) forked at 4 into branches 2 (9 tokens) and 3 (12 tokens), reward 1
    each; chain 1 (8 tokens, reward 1) is not forked. Token ids are 2 + response position (+ 20 for
    the branches' own tokens) so rows can be read back.
    """
    from deepgrpo_agent.rollout import RolloutBatch
    from deepgrpo_agent.tree import TreePath

    def batch(prefixes, news, rewards):
        n = len(news)
        return RolloutBatch(
            problem_index=np.zeros(n, np.int64), problem_id=["p"] * n, group=np.zeros(n, np.int64),
            prompt_ids=[np.array([40, 41])] * n, prefix_ids=prefixes, new_ids=news,
            logprobs=[np.zeros(len(x), np.float32) for x in news], entropies=[np.zeros(len(x), np.float32) for x in news],
            rewards=np.array(rewards, np.float64), correct=np.array([r > 0 for r in rewards], dtype=object),
            grade_status=["ok"] * n, terminated=np.ones(n, bool), truncated=np.zeros(n, bool),
            generated_tokens=sum(len(x) for x in news), prefilled_tokens=0,
        )

    empty = np.zeros(0, np.int64)
    roots = batch([empty, empty], [2 + np.arange(10), 2 + np.arange(8)], [0.0, 1.0])
    shared = 2 + np.arange(4)
    branches = batch([shared, shared], [22 + np.arange(4, 9), 22 + np.arange(4, 12)], [1.0, 1.0])
    return [TreePath(0, 0, -1, 0, roots, 0), TreePath(0, 1, -1, 0, roots, 1),
            TreePath(0, 0, 0, 4, branches, 0), TreePath(0, 0, 0, 4, branches, 1)]


# R(s) by hand, V(root) = 3/4: the shared segment [0, 4) of chain 0 has V = 2/3 over 3 leaves.
A_SHARED = 2 * (2 / 3 - 3 / 4) / math.sqrt(3)
A_CHAIN0_TAIL = (0 - 3 / 4) + (0 - 2 / 3)
A_CHAIN1 = 2 * (1 - 3 / 4)
A_BRANCH = (1 - 3 / 4) + (1 - 2 / 3)


@pytest.mark.parametrize("weighting", ["paths", "segments"])
def test_trainer_advantages_on_a_fixed_tree(tmp_path, weighting):
    """End to end through TreeRLTrainer.tree_samples: rows, per-token advantages and total weights."""
    trainer = TreeRLTrainer(tree_config(tmp_path, tree_weighting=weighting), model=tiny_model(VOCAB))
    paths = fixed_tree_paths()
    samples, metrics = trainer.tree_samples(paths)
    rows = {(tuple(c), tuple(t)): samples.row_token_advantages(i)
            for i, (c, t) in enumerate(zip(samples.contexts, samples.targets))}
    prompt = (40, 41)
    if weighting == "paths":  # one row per leaf: context = prompt, target = the whole response
        assert len(samples) == 4 and samples.token_advantages is not None
        expected = {
            tuple(2 + np.arange(10)): [A_SHARED] * 4 + [A_CHAIN0_TAIL] * 6,
            tuple(2 + np.arange(8)): [A_CHAIN1] * 8,
            tuple(np.r_[2 + np.arange(4), 22 + np.arange(4, 9)]): [A_SHARED] * 4 + [A_BRANCH] * 5,
            tuple(np.r_[2 + np.arange(4), 22 + np.arange(4, 12)]): [A_SHARED] * 4 + [A_BRANCH] * 8,
        }
        assert set(rows) == {(prompt, t) for t in expected}
        for target, adv in expected.items():
            np.testing.assert_allclose(rows[(prompt, target)], adv, rtol=1e-6)
        shared_weight = 3 * A_SHARED  # = sqrt(3) * (GA + LA): the shared tokens are in 3 rows
    else:  # one row per segment, each token once
        assert len(samples) == 5 and samples.token_advantages is None
        expected_seg = {
            (prompt, tuple(2 + np.arange(4))): A_SHARED,
            (prompt + tuple(2 + np.arange(4)), tuple(2 + np.arange(4, 10))): A_CHAIN0_TAIL,
            (prompt, tuple(2 + np.arange(8))): A_CHAIN1,
            (prompt + tuple(2 + np.arange(4)), tuple(22 + np.arange(4, 9))): A_BRANCH,
            (prompt + tuple(2 + np.arange(4)), tuple(22 + np.arange(4, 12))): A_BRANCH,
        }
        assert set(rows) == set(expected_seg)
        for key, a in expected_seg.items():
            np.testing.assert_allclose(rows[key], a, rtol=1e-6)
        shared_weight = A_SHARED  # = (GA + LA) / sqrt(3)
    # Total advantage mass on one shared token: sqrt(|L|) * (GA + LA) for paths, / sqrt(|L|) for segments.
    ga_la = 2 * (2 / 3 - 3 / 4)
    total = sum(adv[0] for (c, t), adv in rows.items() if len(c) == 2 and t[:1] == (2,) and len(t) != 8)
    np.testing.assert_allclose(total, shared_weight, rtol=1e-6)
    np.testing.assert_allclose(shared_weight, ga_la * (math.sqrt(3) if weighting == "paths" else 1 / math.sqrt(3)))
    assert metrics["tree/generated_tokens_per_prompt"] == 10 + 8 + 5 + 8


def test_path_rows_give_the_per_path_token_mean_loss(tmp_path):
    """The update on path rows equals a hand-written TreeRL loss: token mean over every path's tokens of
    -A_t * rho_t (ratio 1 at the first epoch), so its gradient is that of -sum A_t log p_t / #tokens."""

    trainer = TreeRLTrainer(tree_config(tmp_path, max_grad_norm=1e9), model=tiny_model(VOCAB))  # no clipping
    samples, _ = trainer.tree_samples(fixed_tree_paths())
    trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=1.0)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda _: 1.0)
    model = trainer.model
    model.zero_grad()
    total_tokens = 10 + 8 + 9 + 12
    for c, t, i in zip(samples.contexts, samples.targets, range(len(samples))):
        ids = torch.from_numpy(np.concatenate([c, t]))[None]
        logp = model(ids).logits[0, len(c) - 1 : -1].float().log_softmax(-1)
        chosen = logp.gather(1, torch.from_numpy(t)[:, None])[:, 0]
        (-(torch.from_numpy(samples.row_token_advantages(i)) * chosen).sum() / total_tokens).backward()
    reference = [p.grad.clone() for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    metrics = trainer.update(samples)
    assert metrics["train/trained_tokens"] == total_tokens
    for p, b, g in zip(model.parameters(), before, reference):
        torch.testing.assert_close(b - p.detach(), g, rtol=1e-4, atol=1e-6)  # SGD lr 1: the step is the gradient


def test_uniform_tree_budget_is_equal_rollouts_and_its_tokens_are_reported(tmp_path):
    """Same (M, N, L, T) and the same roots: the same root and branch rollouts, not the same tokens."""
    budgets, metrics = [], []
    for cls, trainer_cls in ((TreeConfig, TreeRLTrainer), (UniformTreeConfig, UniformTreeTrainer)):
        trainer = trainer_cls(tree_config(tmp_path / cls.__name__, cls=cls), model=tiny_model(VOCAB))
        _, m = trainer.collect_samples()
        budgets.append(trainer.budget)
        metrics.append(m)
        assert m["tree/generated_tokens_per_prompt"] * 2 == trainer.budget.generated_tokens  # 2 prompts
    (entropy, uniform), (m_entropy, m_uniform) = budgets, metrics
    assert entropy.root_rollouts == uniform.root_rollouts == 2 * 3
    assert entropy.branch_rollouts == uniform.branch_rollouts > 0
    assert m_entropy["tree/forks"] == m_uniform["tree/forks"]
    # The forks sit at other depths, so the branches generate other numbers of tokens.
    assert m_entropy["pivot/ratio_mean"] != m_uniform["pivot/ratio_mean"]
