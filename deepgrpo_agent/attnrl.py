"""AttnRL (Liu et al., "Attention as a Compass", arXiv 2509.26628; docs/methods.md §4b), on ``reset_to``.

Process-supervised RL that branches where the policy's own attention says a step matters. Per step:

1. **Initial sampling**: M = ``tree_chains`` responses per prompt (the authors: 6).
2. **Steps**: each response is cut into steps after every token whose text contains "\\n\\n"; a response
   with none falls back to "\\n", and one with neither to one step per token (``segment="line"`` starts
   the chain at "\\n", for envs that write one step per line).
3. **Forward Context Influence** (:func:`forward_context_influence`): one forward pass of the policy
   with eager attention over prompt + response; token-to-token attention A (every layer and head) is
   averaged into step-to-step attention α[q, k] = mean over tokens i of step q and j of step k of A[i, j]
   (the prompt is step 0), and y[k] = max over layers and heads of Σ_{q >= k + Δ} α[q, k], Δ = ``fci_delta``.
   The prompt's and the first response step's scores are 0.
4. **Branch points** (:func:`attention_forks`): the steps whose FCI is at least the response's
   ``fci_quantile`` quantile (80th: the top 20%), scanned in position order, each at least
   ``fork_min_distance`` tokens from the sequence start and from the points already chosen, N =
   ``tree_forks`` of them; short of N, the earliest remaining steps fill in. A branch restarts at the
   *start* of the chosen step (the step itself is resampled), T = ``tree_branches`` continuations each.
5. **Adaptive sampling** (:func:`branch_plan`, ``adaptive_sampling=True``): with c of M responses
   correct, ceil(M·exp(-c/M)) responses branch: all of them when none is correct; the minority outcome's
   responses first, random majority ones after, when mixed; when all are correct, the first ones only if
   the prompt's mean FCI is above the running mean of every all-correct prompt so far, else the prompt
   is dropped (no branches, no training).
6. **Advantages**: TreeRL's, on the resulting one-level tree (deepgrpo_agent/tree.py): node value V =
   mean leaf reward, R(s) = [(V(s) - V(root)) + (V(s) - V(parent))] / sqrt(|leaves(s)|), one training row
   per root-to-leaf path of a *branched* response (responses that were not branched count in V(root) but
   are not trained), and a prompt whose trained leaves all agree is dropped (``filter_zero_signal``).

What is taken from where: steps 1-6 from the authors' released code (github.com/RyanLiu112/AttnRL,
``recipe/attnrl`` and their patched ``modeling_qwen2.py``), read for understanding; where the paper's
text and the code differ the code is followed (it takes the *earliest* well-spaced top-20% steps, not
the highest; FCI sums over later steps without dividing by their number).

Deviations (docs/pivot_utility.md, "AttnRL"):
- **On-policy.** The authors' one-step off-policy pipeline (continuations of step t-1's trees generated
  together with step t's responses) saves a generation round on a GPU serving engine; here both rounds
  run in the same step with the current weights.
- **No dynamic batch size.** The authors resize the prompt batch from the last batch's size; here every
  step has ``prompts_per_step`` prompts, so runs compare at equal optimizer steps and equal prompts.
- The loss is the library's GRPO loss (clip, KL, aggregation as configured), not their PPO dual-clip
  with a KL loss of 0.001; no ``</think>`` handling (no env here writes one).
- Δ = 4 and the 512-token distance are the authors' values for 8k-token responses; on short responses
  (the testbeds' 5-8 lines) they leave few or no candidates and the fallback decides, so the testbed
  comparisons set ``fci_delta`` and ``fork_min_distance`` to their scale (the configs say so).
- FCI is computed in the run's compute dtype (bf16 autocast under mixed precision, as the authors' bf16
  kernel), over whole sequences at once: memory grows as layers x heads x length^2 per row.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from deepgrpo_agent.pivots import boundary_table
from deepgrpo_agent.rollout import RolloutBatch
from deepgrpo_agent.samples import Rollouts, TrainSamples
from deepgrpo_agent.tree import (
    Fork,
    TreeConfig,
    TreePath,
    TreeRLTrainer,
    TreeRollouts,
    path_samples,
    prompt_tree,
)

ADS_RNG_SALT = 29
"""The adaptive-sampling generator is seeded ``[config.seed, ADS_RNG_SALT]``."""

AttnSegment = Literal["paragraph", "line"]
"""Step delimiters, tried in order: "paragraph" = "\\n\\n", then "\\n", then every token; "line" = "\\n", then every token."""


@dataclass(kw_only=True)
class AttnRLConfig(TreeConfig):
    """TreeConfig with AttnRL's fields (defaults: the authors' run, (M, N, T) = (6, 2, 2), one level).

    TreeRL's fork filters (``fork_selection``, ``skip_first_fraction``, ``skip_last_tokens``,
    ``stop_words``) are not used: AttnRL forks at step starts chosen by FCI.
    """

    segment: AttnSegment = "paragraph"
    """Step delimiter: "paragraph" ("\\n\\n", falling back to "\\n", then to single tokens; the authors'), or "line" ("\\n" first)."""
    fci_delta: int = 4
    """Δ: FCI of step k sums the attention of steps k + Δ and later (the authors: 4)."""
    fci_quantile: float = 0.8
    """Branch candidates are the steps whose FCI is at least this quantile of the response's (0.8: the top 20%)."""
    fork_min_distance: int = 512
    """A branch point starts at least this many tokens (prompt included) after the sequence start and from every point already chosen (the authors: 512)."""
    adaptive_sampling: bool = True
    """Branch ceil(M·exp(-c/M)) responses per prompt by its c correct ones, drop all-correct prompts of low FCI (the authors' ADS); False branches every response."""
    filter_zero_signal: bool = True
    """Drop a prompt whose trained leaves all have the same reward (the authors' filter_zero_std_adv)."""

    def _value_checks(self) -> list[tuple[bool, str, str, str]]:
        return super()._value_checks() + [
            (self.segment in ("paragraph", "line"), "segment", 'in ("paragraph", "line")',
             '"paragraph" splits at blank lines (the authors\'), "line" at newlines.'),
            (self.fci_delta >= 1, "fci_delta", ">= 1", "The authors use 4; short responses need 1 or 2."),
            (0.0 <= self.fci_quantile <= 1.0, "fci_quantile", "in [0, 1]", "The authors use 0.8 (the top 20%)."),
            (self.fork_min_distance >= 0, "fork_min_distance", ">= 0", "The authors use 512 tokens; 0 disables it."),
            (self.tree_rounds == 1, "tree_rounds", "== 1", "AttnRL's tree has one level of branches."),
        ]


# -- steps and FCI ---------------------------------------------------------------------------------


def step_ends(response: npt.NDArray[np.int64], tables: Sequence[npt.NDArray[np.bool_]]) -> npt.NDArray[np.int64]:
    """Exclusive end of every step of ``response``: after each token marked by the first of ``tables``
    that marks any token of it (the delimiter belongs to the step it ends), else one step per token.

    The last entry is always ``len(response)`` (a tail without a delimiter is the last step).
    """
    n = int(response.shape[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    for table in tables:
        marks = np.flatnonzero(table[response]) + 1
        if marks.size:
            ends = marks[marks < n]
            return np.concatenate([ends, [n]]).astype(np.int64)
    return np.arange(1, n + 1, dtype=np.int64)


def step_attention(attentions: torch.Tensor, ranges: Sequence[tuple[int, int]]) -> torch.Tensor:
    """(..., R, R) step-to-step attention α[q, k] = mean over i in step q, j in step k of A[..., i, j].

    Args:
        attentions: (..., T, T) token attention (rows attend to columns), e.g. (layers, heads, T, T).
        ranges: R token ranges [a, b) covering the sequence in order (the prompt first).
    """
    t = int(attentions.shape[-1])
    w = torch.zeros(len(ranges), t, dtype=attentions.dtype, device=attentions.device)
    for r, (a, b) in enumerate(ranges):
        if not 0 <= a < b <= t:
            raise ValueError(f"Expected ranges inside [0, {t}) with a < b, got {(a, b)} at index {r}.")
        w[r, a:b] = 1.0 / (b - a)
    return torch.einsum("qi,...ij,kj->...qk", w, attentions, w)


def forward_context_influence(attentions: torch.Tensor, ranges: Sequence[tuple[int, int]], delta: int) -> npt.NDArray[np.float64]:
    """FCI of every range: y[k] = max over the leading dims (layers, heads) of Σ_{q >= k + delta} α[q, k].

    Args:
        attentions: (L, H, T, T) attention of one sequence (prompt + response), every layer and head.
        ranges: Its R token ranges, the prompt first, then the response's steps.
        delta: Δ (>= 1).

    Returns:
        (R,) scores; the prompt's (index 0) and the first response step's (index 1) are 0, as are the
        last ``delta`` steps' (no step lies far enough after them).
    """
    alpha = step_attention(attentions.double(), ranges)  # (L, H, R, R)
    r = len(ranges)
    q = torch.arange(r).unsqueeze(1)
    k = torch.arange(r).unsqueeze(0)
    later = (q >= k + delta).to(alpha.dtype)  # (R, R): attending step q is delta or more after k
    y = (alpha * later).sum(dim=-2)  # (L, H, R)
    scores = y.reshape(-1, r).max(dim=0).values.cpu().numpy().astype(np.float64)
    scores[: min(2, r)] = 0.0
    return scores


def attention_forks(
    fci: npt.NDArray[np.float64],
    starts: npt.NDArray[np.int64],
    *,
    prompt_len: int,
    count: int,
    min_distance: int,
    quantile: float,
) -> list[int]:
    """Indices of the response steps to branch from (the authors' rule; sorted).

    Candidates: steps 1.. (never the first) with FCI >= the ``quantile`` quantile of ``fci`` (all steps,
    zeros included; if that is 0 while some score is positive, the smallest positive score). They are
    scanned in position order; one is kept if its start (``prompt_len + starts[j]``) is >= ``min_distance``
    and it is >= ``min_distance`` tokens from every kept one, up to ``count``. Short of ``count``, steps
    1, 2, ... fill in (no distance rule, no repeats), then repeats of them.

    Args:
        fci: (S,) FCI of the response's steps (the first is ignored).
        starts: (S,) response position where each step starts.
    """
    s = int(fci.shape[0])
    if s <= 1 or count <= 0:
        return []
    threshold = float(np.quantile(fci, quantile))
    if threshold == 0.0 and (fci > 0).any():
        threshold = float(fci[fci > 0].min())
    chosen: list[int] = []
    for j in range(1, s):
        if fci[j] < threshold:
            continue
        at = prompt_len + int(starts[j])
        if at >= min_distance and all(abs(int(starts[j]) - int(starts[c])) >= min_distance for c in chosen):
            chosen.append(j)
            if len(chosen) == count:
                return sorted(chosen)
    rest = [j for j in range(1, s) if j not in chosen]
    chosen += rest[: count - len(chosen)]
    steps = list(range(1, s))
    i = 0
    while len(chosen) < count:
        chosen.append(steps[i % len(steps)])
        i += 1
    return sorted(chosen)


def branch_plan(
    correct: npt.NDArray[np.bool_], rng: np.random.Generator, *, above_mean_fci: bool
) -> npt.NDArray[np.int64] | None:
    """Which of a prompt's M responses branch (adaptive sampling), or None to drop the prompt.

    With c correct: ceil(M·exp(-c/M)) of them. All wrong: every response. Mixed: the minority outcome's
    responses (the wrong ones when c >= M/2, else the right ones), then majority ones drawn at random.
    All correct: the first ceil(M·exp(-1)) if ``above_mean_fci`` (the prompt's mean FCI beats the running
    mean of all-correct prompts), else None.
    """
    m = int(correct.shape[0])
    c = int(correct.sum())
    k = min(m, math.ceil(m * math.exp(-c / m)))
    if c == m:
        return np.arange(k, dtype=np.int64) if above_mean_fci else None
    if c == 0:
        return np.arange(m, dtype=np.int64)
    minority_is_wrong = c / m >= 0.5
    minority = np.flatnonzero(~correct if minority_is_wrong else correct)
    majority = np.flatnonzero(correct if minority_is_wrong else ~correct)
    extra = max(k - minority.size, 0)
    picked = rng.choice(majority, size=min(extra, majority.size), replace=False) if extra else np.zeros(0, np.int64)
    return np.sort(np.concatenate([minority[:k], picked]).astype(np.int64))


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """The model with eager attention (which returns attention weights) inside the block, its own after."""
    before = getattr(model.config, "_attn_implementation", None)
    if before == "eager" or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


# -- the trainer -----------------------------------------------------------------------------------


@dataclass
class AttnRLRollouts(TreeRollouts):
    """TreeRollouts plus which prompts adaptive sampling dropped and which chains were branched."""

    dropped: set[int] = field(default_factory=set)
    branched: set[int] = field(default_factory=set)


class AttnRLTrainer(TreeRLTrainer):
    """TreeRL's tree machinery with AttnRL's branch points, adaptive sampling and trained rows."""

    algo = "attnrl"
    config: AttnRLConfig

    def __init__(self, config: AttnRLConfig, **kwargs: Any) -> None:
        if not isinstance(config, AttnRLConfig):
            raise TypeError(f"Expected an AttnRLConfig, got {type(config).__name__}.")
        self.ads_rng = np.random.default_rng([config.seed, ADS_RNG_SALT])
        self.fci_sum, self.fci_count = 0.0, 0  # running mean of all-correct prompts' mean FCI
        super().__init__(config, **kwargs)
        decode, vocab = self.env.codec.decode, self.envs.vocab_size
        line = boundary_table(decode, vocab, "line")
        paragraph = np.array(["\n\n" in decode([i]) for i in range(vocab)], dtype=bool)
        self.step_tables = [paragraph, line] if config.segment == "paragraph" else [line]

    # -- FCI of the root chains -------------------------------------------------------------------
    def chain_steps(self, batch: RolloutBatch) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]:
        """Per row of ``batch``: its steps' start positions and FCI (one eager forward per micro-batch)."""
        rows = range(len(batch))
        ends = [step_ends(np.asarray(batch.new_ids[r], dtype=np.int64), self.step_tables) for r in rows]
        out: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]] = []
        size = max(1, self.config.micro_batch_size)
        with torch.no_grad(), eager_attention(self.model), self.precision.autocast():
            for lo in range(0, len(batch), size):
                chunk = list(range(lo, min(lo + size, len(batch))))
                seqs = [np.concatenate([batch.prompt_ids[r], batch.new_ids[r]]).astype(np.int64) for r in chunk]
                width = max(len(s) for s in seqs)
                ids = torch.zeros(len(chunk), width, dtype=torch.long)
                for b, s in enumerate(seqs):  # right padding: causal rows never see the pads after them
                    ids[b, : len(s)] = torch.from_numpy(s)
                attn = self.model(input_ids=ids.to(self.device), output_attentions=True, use_cache=False).attentions
                for b, r in enumerate(chunk):
                    p, n = len(batch.prompt_ids[r]), len(seqs[b])
                    e = ends[r]
                    starts = np.concatenate([[0], e[:-1]]).astype(np.int64)
                    if e.size == 0:
                        out.append((starts, np.zeros(0)))
                        continue
                    ranges = [(0, p)] + [(p + int(a), p + int(z)) for a, z in zip(starts, e)]
                    a = torch.stack([layer[b, :, :n, :n] for layer in attn])  # (L, H, n, n)
                    out.append((starts, forward_context_influence(a.float(), ranges, self.config.fci_delta)[1:]))
        return out

    # -- the overridden stages --------------------------------------------------------------------
    def collect(self) -> Rollouts:
        """M responses per prompt, FCI, adaptive sampling, N branch points per branched response, T continuations each."""
        cfg = self.config
        self.model.eval()
        problems = self.next_problems(cfg.prompts_per_step)
        roots = self.sample_roots(problems, cfg.tree_chains)
        metrics = self.rollout_metrics([roots])
        paths = [TreePath(int(roots.group[r]), r, -1, 0, roots, r) for r in range(len(roots))]
        steps = self.chain_steps(roots)
        correct = np.array([roots.correct[r] is True for r in range(len(roots))])
        groups: dict[int, list[int]] = {}
        for r in range(len(roots)):
            groups.setdefault(int(roots.group[r]), []).append(r)
        # The running mean takes this step's all-correct prompts before any of them is compared with it.
        prompt_fci = {g: float(np.mean([steps[r][1].mean() if steps[r][1].size else 0.0 for r in rows]))
                      for g, rows in groups.items()}
        for g, rows in groups.items():
            if correct[rows].all():
                self.fci_sum += prompt_fci[g]
                self.fci_count += 1
        running = self.fci_sum / self.fci_count if self.fci_count else 0.0
        dropped: set[int] = set()
        branched: list[int] = []
        for g, rows in groups.items():
            rows_arr = np.asarray(rows)
            if not cfg.adaptive_sampling:
                branched += rows
                continue
            plan = branch_plan(correct[rows_arr], self.ads_rng, above_mean_fci=prompt_fci[g] > running)
            if plan is None:
                dropped.add(g)
            else:
                branched += rows_arr[plan].tolist()
        forks: list[Fork] = []
        for r in sorted(branched):
            starts, fci = steps[r]
            n = len(roots.new_ids[r])
            for j in attention_forks(fci, starts, prompt_len=len(roots.prompt_ids[r]), count=cfg.tree_forks,
                                     min_distance=cfg.fork_min_distance, quantile=cfg.fci_quantile):
                forks.append(Fork(r, int(starts[j]), int(starts[j]) / max(n, 1)))
        branches: list[RolloutBatch] = []
        if forks:
            batch = self.expand(paths, forks)
            self.add_branches(paths, forks, batch)
            branches.append(batch)
        metrics.update(self._fork_metrics(forks, branches))
        all_fci = np.concatenate([f for _, f in steps if f.size]) if steps else np.zeros(0)
        metrics.update({
            "attn/fci_mean": float(all_fci.mean()) if all_fci.size else 0.0,
            "attn/steps_per_response": float(np.mean([s.size for s, _ in steps])) if steps else 0.0,
            "attn/dropped_prompts": float(len(dropped)),
            "attn/branched_responses": float(len(branched)),
            "attn/fci_running_mean": running,
        })
        signal = np.ones(len(roots), dtype=bool)  # the zero-signal filter acts per tree, in compute_advantages
        return AttnRLRollouts([roots], [signal], metrics, paths, forks, branches, dropped, set(branched))

    def compute_advantages(self, rollouts: Rollouts) -> tuple[TrainSamples, dict[str, float]]:
        """One row per root-to-leaf path of each branched response, TreeRL's R(s) per token (module docstring)."""
        if not isinstance(rollouts, AttnRLRollouts):
            raise TypeError(f"Expected the AttnRLRollouts of AttnRLTrainer.collect, got {type(rollouts).__name__}.")
        paths = rollouts.paths
        by_group: dict[int, list[int]] = {}
        for i, path in enumerate(paths):
            by_group.setdefault(path.group, []).append(i)
        parts: list[TrainSamples] = []
        filtered = 0
        for g, members in by_group.items():
            if g in rollouts.dropped:
                continue
            group = [paths[i] for i in members]
            tree, rewards, adv = prompt_tree(paths, members)
            trained = np.array([p.parent >= 0 or i in rollouts.branched for i, p in zip(members, group)])
            if not trained.any():
                continue
            if self.config.filter_zero_signal and np.all(rewards[trained] == rewards[trained][0]):
                filtered += 1
                continue
            parts.append(path_samples(tree, group, adv).select(trained))
        samples = TrainSamples.concat(parts)
        token_adv = (np.concatenate([samples.row_token_advantages(i) for i in range(len(samples))])
                     if len(samples) else np.zeros(0))
        metrics = {
            "tree/trained_rows": float(len(samples)),
            "tree/leaf_accuracy": float(np.mean([p.batch.correct[p.row] is True for p in paths])),
            "tree/generated_tokens_per_prompt": float(sum(len(p.batch.new_ids[p.row]) for p in paths)) / max(len(by_group), 1),
            "attn/zero_signal_prompts": float(filtered),
            "adv/global_count": float(len(samples)),
            "adv/global_abs_mean": float(np.abs(token_adv).mean()) if token_adv.size else 0.0,
        }
        return samples, metrics

    # -- checkpointed strategy state --------------------------------------------------------------
    def strategy_state(self) -> dict[str, Any]:
        return {**super().strategy_state(), "ads_rng": self.ads_rng.bit_generator.state,
                "fci_sum": self.fci_sum, "fci_count": self.fci_count}

    def load_strategy_state(self, state: dict[str, Any]) -> None:
        super().load_strategy_state(state)
        self.ads_rng.bit_generator.state = state["ads_rng"]
        self.fci_sum, self.fci_count = float(state["fci_sum"]), int(state["fci_count"])


__all__ = [
    "AttnRLConfig",
    "AttnRLRollouts",
    "AttnRLTrainer",
    "attention_forks",
    "branch_plan",
    "eager_attention",
    "forward_context_influence",
    "step_attention",
    "step_ends",
]
