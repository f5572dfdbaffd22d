"""Tree-based baselines (docs/methods.md §4): TreeRL's EPTree and uniform random branching, on reset_to.

Per prompt, ``tree_chains`` (M) root chains are sampled; each of ``tree_rounds`` (L) rounds picks up
to ``tree_forks`` (N) fork positions per chain's tree among the tokens generated in the previous round
and samples ``tree_branches`` (T) continuations from the state *before* each chosen token (the token is
resampled), restored with ``reset_to`` through the branching primitive. The result is an explicit
tree of segments: a sequence forked at f1 < f2 splits into [start, f1), [f1, f2), [f2, end), and a
branch from f is a child of the segment that ends at f. With node value V(s) = mean reward of the
leaves under s, every token of segment s gets the advantage (TreeRL, docs/methods.md §4)::

    R(s) = [(V(s) - V(root)) + (V(s) - V(parent(s)))] / sqrt(|leaves(s)|)

and, by default (``tree_weighting="paths"``, TreeRL's), each root-to-leaf path is one training row
(context = the prompt, target = the leaf's whole response, each token with the R(s) of its segment),
so a segment shared by |leaves(s)| leaves is trained once per leaf under it: its total weight is
|leaves(s)| * R(s) = sqrt(|leaves(s)|) * [(V(s) - V(root)) + (V(s) - V(parent(s)))].
``tree_weighting="segments"`` (this library's earlier behaviour) makes each segment one row instead
(context = prompt + the response before it, target = its tokens, advantage R(s)): every generated
token is trained exactly once and a shared segment weighs (GA + LA) / sqrt(|leaves(s)|), i.e.
1 / |leaves(s)| of the paper's weight. ``fork_selection="entropy"`` picks
the N tokens with the highest surprisal -log p(sampled token) (EPTree); ``"uniform"`` picks N allowed
positions uniformly at random (the same tree budget: isolates *where* to branch from *how much*).

The uniform tree's "same budget" is **equal rollouts**, not equal tokens: the same (M, N, L, T), so the
same number of root chains and branches per prompt, but branches forked at other depths generate
other numbers of tokens. Both trainers log
``tree/generated_tokens_per_prompt`` and ``budget/generated_tokens`` so the token budgets can be
compared; compare strategies on the equal-generated-tokens protocol (docs/methods.md §5) to match tokens.

Deviations from the paper (docs/methods.md §4):
- ``group_size`` is not used: the M = ``tree_chains`` root chains are the roots of each prompt (a
  shared base config, e.g. the comparison's ``group_size=8``, may still set it; it is ignored).
- Rounds after the first fork only tokens generated in the previous round (a leaf's own suffix), up to
  N forks per chain's tree per round, so a prompt has at most M * (1 + L * N * T) leaves
  ((6, 2, 1, 2) -> 30, the paper's count).
- Position 0 is never a fork (a branch there is just another chain); the first
  ``skip_first_fraction`` of a response, its last ``skip_last_tokens`` tokens and every token at or
  after the first stop word are excluded too. Short responses may have fewer than N allowed
  positions, or none: they get fewer forks (``tree/unforkable_fraction`` counts chain-trees with none),
  so short-response envs spend less than the nominal budget; budgets are compared in generated tokens.
- Stop words are matched, case-insensitively, in the concatenation of per-token decodes (a per-id
  text table), which equals the decoded text for character and byte-level codecs and approximates it
  for tokenizers whose decode merges pieces (SentencePiece spaces).
- ``tree_weighting="paths"`` (default) is the paper's weighting; ``"segments"`` keeps the earlier
  one-row-per-segment weighting as a named option (its shared segments count |leaves| times less).
- Node values use the env's reward (binary for the shipped verifiers); unscorable leaves (nan) count
  as 0. Branches are scored as root rollouts are (no truncated-is-failure rule).
- ``dynamic_sampling="drop"`` drops every segment of a tree whose leaves all have the same reward;
  ``"refill"`` is not supported. Every rollout is sampled at ``temperature``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from deepgrpo_agent.config import GRPOConfig
from deepgrpo_agent.rollout import RolloutBatch
from deepgrpo_agent.samples import GLOBAL_STREAM, Rollouts, TrainSamples
from deepgrpo_agent.trainer import GRPOTrainer

FORK_RNG_SALT = 23
"""The fork generator is seeded ``[config.seed, FORK_RNG_SALT]``: independent of the run's other streams."""

ForkSelection = Literal["entropy", "uniform"]
"""How fork positions are chosen: highest surprisal (TreeRL's EPTree) or uniformly at random."""

TreeWeighting = Literal["paths", "segments"]
"""Training rows of a tree: one per root-to-leaf path (TreeRL) or one per segment (each token once)."""


@dataclass(kw_only=True)
class TreeConfig(GRPOConfig):
    """GRPOConfig plus the tree's own fields (defaults: TreeRL's (M, N, L, T) = (6, 2, 1, 2)).

    ``group_size`` is ignored: each prompt's roots are its ``tree_chains`` chains.
    """

    tree_chains: int = 6
    """M: root chains sampled per prompt (replaces `group_size`, which tree strategies ignore)."""
    tree_forks: int = 2
    """N: fork positions chosen per chain's tree in each round (fewer when too few positions are allowed)."""
    tree_rounds: int = 1
    """L: forking rounds; each round after the first forks the leaves the previous round created."""
    tree_branches: int = 2
    """T: continuations sampled from each fork position (the token at the fork is resampled)."""
    fork_selection: ForkSelection = "entropy"
    """"entropy": the N allowed tokens with the highest -log p(sampled token) (EPTree); "uniform": N allowed positions at random (same budget)."""
    skip_first_fraction: float = 0.05
    """Never fork in the first this fraction of a response (TreeRL: ~5%); position 0 is never a fork."""
    skip_last_tokens: int = 10
    """Never fork in the last this many tokens of a response (TreeRL: 10)."""
    stop_words: tuple[str, ...] = ("answer", "conclusion")
    """Never fork at or after the first token whose cumulative response text contains one of these (case-insensitive)."""
    tree_weighting: TreeWeighting = "paths"
    """"paths": one row per root-to-leaf path, a segment shared by |L| leaves weighs sqrt(|L|)(GA+LA) (TreeRL); "segments": one row per segment, weight (GA+LA)/sqrt(|L|) (every token trained once)."""

    def _value_checks(self) -> list[tuple[bool, str, str, str]]:
        return super()._value_checks() + [
            (self.tree_chains >= 1, "tree_chains", ">= 1", "TreeRL uses 6 chains per prompt."),
            (self.tree_forks >= 0, "tree_forks", ">= 0", "TreeRL uses 2; 0 trains the chains alone."),
            (self.tree_rounds >= 0, "tree_rounds", ">= 0", "TreeRL uses 1; 0 trains the chains alone."),
            (self.tree_branches >= 1, "tree_branches", ">= 1", "TreeRL uses 2 continuations per fork."),
            (0.0 <= self.skip_first_fraction < 1.0, "skip_first_fraction", "in [0, 1)", "TreeRL skips ~0.05."),
            (self.skip_last_tokens >= 0, "skip_last_tokens", ">= 0", "TreeRL skips the last 10 tokens."),
            (all(w.strip() for w in self.stop_words), "stop_words", "to hold non-empty words",
             'Use e.g. ("answer", "conclusion"), or () for none.'),
            (self.tree_weighting in ("paths", "segments"), "tree_weighting", 'in ("paths", "segments")',
             '"paths" is TreeRL\'s weighting; "segments" trains each segment once.'),
            (self.dynamic_sampling != "refill", "dynamic_sampling", 'to be "off" or "drop" for tree strategies',
             'Refilling whole trees is not supported; "drop" removes trees whose leaves all agree.'),
        ]


@dataclass(kw_only=True)
class UniformTreeConfig(TreeConfig):
    """TreeConfig whose forks are uniform random positions (the "uniform-tree" baseline, docs/methods.md §4)."""

    fork_selection: ForkSelection = "uniform"
    """"uniform" (this baseline's point); "entropy" would make it TreeRL."""


# -- fork positions ------------------------------------------------------------------------------------


def token_texts(decode: Callable[[list[int]], str], vocab_size: int) -> list[str]:
    """Lower-cased text of every token id: the per-id table :func:`stop_index` matches stop words in."""
    return [decode([i]).lower() for i in range(vocab_size)]


def stop_index(response: npt.NDArray[np.int64], texts: Sequence[str], stop_words: Sequence[str]) -> int:
    """Index of the first token whose cumulative text contains a stop word; ``len(response)`` if none.

    The text is the concatenation of ``texts[id]`` (lower-cased per token, so character offsets stay
    aligned with tokens); a stop word that straddles tokens stops at the token completing it.
    """
    n = int(response.shape[0])
    words = [w.lower() for w in stop_words]
    if n == 0 or not words:
        return n
    pieces = [texts[int(i)] for i in response]
    text = "".join(pieces)
    ends = np.cumsum([len(p) for p in pieces])  # (n,) char offset just past each token
    found = [text.find(w) + len(w) for w in words if w in text]
    if not found:
        return n
    return int(np.searchsorted(ends, min(found), side="left"))  # first token whose prefix holds the match


def allowed_forks(
    length: int, *, start: int, stop: int, skip_first_fraction: float, skip_last_tokens: int
) -> npt.NDArray[np.bool_]:
    """(length,) bool: the positions t where a fork (resampling token t) is allowed.

    Allowed: ``max(1, start, ceil(skip_first_fraction * length)) <= t < min(length - skip_last_tokens,
    stop)``. ``start`` is where the sequence's own tokens begin plus one (later rounds fork only what the
    previous round generated); ``stop`` is :func:`stop_index`.
    """
    lo = max(1, start, int(np.ceil(skip_first_fraction * length - 1e-9)))
    hi = min(length - skip_last_tokens, stop)
    mask = np.zeros(length, dtype=bool)
    if hi > lo:
        mask[lo:hi] = True
    return mask


def select_forks(
    surprisal: npt.NDArray[np.float64],
    allowed: npt.NDArray[np.bool_],
    count: int,
    mode: ForkSelection,
    rng: np.random.Generator,
) -> npt.NDArray[np.int64]:
    """Up to ``count`` distinct allowed positions of a candidate pool, sorted (fewer if fewer allowed).

    Args:
        surprisal: (P,) -log p of each sampled token of the pool (positions of all its sequences).
        allowed: (P,) bool mask from :func:`allowed_forks`.
        count: N.
        mode: "entropy" takes the highest surprisal (ties: earliest); "uniform" draws without replacement.
        rng: Used by "uniform" only.
    """
    idx = np.flatnonzero(allowed)
    count = min(count, idx.size)
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    if mode == "entropy":
        order = np.argsort(-surprisal[idx], kind="stable")
        chosen = idx[order[:count]]
    elif mode == "uniform":
        chosen = rng.choice(idx, size=count, replace=False)
    else:
        raise ValueError(f"Expected fork selection 'entropy' or 'uniform', got {mode!r}.")
    return np.sort(chosen).astype(np.int64)


# -- the segment tree ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentTree:
    """The segments of one prompt's tree; node ``k`` is tokens ``[start[k], end[k])`` of sequence ``seq[k]``.

    Attributes:
        seq: (K,) sequence (leaf) each segment belongs to.
        start: (K,) first response position of the segment.
        end: (K,) one past its last position.
        parent: (K,) parent segment; -1 = the prompt (the tree's root).
        leaf_node: (S,) last segment of each sequence (the leaf).
    """

    seq: npt.NDArray[np.int64]
    start: npt.NDArray[np.int64]
    end: npt.NDArray[np.int64]
    parent: npt.NDArray[np.int64]
    leaf_node: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.seq.shape[0])


def build_tree(parents: Sequence[int], forks: Sequence[int], lengths: Sequence[int]) -> SegmentTree:
    """Splits each sequence at its children's fork positions into segments, linked parent to child.

    Args:
        parents: (S,) the sequence each one branched from, -1 for a root chain; a parent comes first.
        forks: (S,) response position where each sequence's own tokens start (0 for chains): the
            branch shares its parent's first ``forks[i]`` tokens.
        lengths: (S,) full response length of each sequence (shared prefix included).

    Raises:
        ValueError: If a parent does not precede its child, a chain does not start at 0, or a fork is
            not strictly inside its parent's own tokens.
    """
    s = len(parents)
    cuts: list[set[int]] = [set() for _ in range(s)]
    for i, (p, f, n) in enumerate(zip(parents, forks, lengths)):
        if p < 0 and f != 0:
            raise ValueError(f"Expected root chain {i} to start at position 0, got {f}.")
        if p >= 0 and not (p < i and forks[p] < f < lengths[p]):
            raise ValueError(
                f"Expected sequence {i}'s parent {p} to precede it and its fork {f} to lie in "
                f"({forks[p] if p < s else '?'}, {lengths[p] if p < s else '?'}), the parent's own tokens."
            )
        if n <= f:
            raise ValueError(f"Expected sequence {i} to generate tokens after position {f}, got length {n}.")
        if p >= 0:
            cuts[p].add(int(f))
    seq: list[int] = []
    start: list[int] = []
    end: list[int] = []
    parent: list[int] = []
    leaf: list[int] = []
    ending: dict[tuple[int, int], int] = {}  # (sequence, end position) -> node
    for i in range(s):
        bounds = [int(forks[i]), *sorted(cuts[i]), int(lengths[i])]
        prev = -1 if parents[i] < 0 else ending[(int(parents[i]), int(forks[i]))]
        for a, b in pairwise(bounds):
            ending[(i, b)] = len(seq)
            seq.append(i)
            start.append(a)
            end.append(b)
            parent.append(prev)
            prev = len(seq) - 1
        leaf.append(prev)
    return SegmentTree(*(np.asarray(x, dtype=np.int64) for x in (seq, start, end, parent, leaf)))


def node_values(
    tree: SegmentTree, rewards: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """V(s) = mean reward of the leaves under each segment, and their count |leaves(s)|.

    Args:
        tree: One prompt's tree.
        rewards: (S,) reward of each sequence (leaf).

    Returns:
        ``(values (K,), leaves (K,))``.
    """
    total = np.zeros(len(tree), dtype=np.float64)
    leaves = np.zeros(len(tree), dtype=np.int64)
    for i, node in enumerate(tree.leaf_node):
        while node >= 0:  # every ancestor segment of leaf i, the leaf's own segment included
            total[node] += rewards[i]
            leaves[node] += 1
            node = tree.parent[node]
    return total / np.maximum(leaves, 1), leaves


def segment_advantages(
    values: npt.NDArray[np.float64],
    leaves: npt.NDArray[np.int64],
    parent: npt.NDArray[np.int64],
    root_value: float,
) -> npt.NDArray[np.float64]:
    """TreeRL's R(s) = [(V(s) - V(root)) + (V(s) - V(parent))] / sqrt(|leaves(s)|) (docs/methods.md §4).

    Args:
        values: (K,) V(s) from :func:`node_values`.
        leaves: (K,) |leaves(s)|.
        parent: (K,) parent segment, -1 = the root, whose value is ``root_value``.
        root_value: V(root), the mean reward of all the prompt's leaves.
    """
    v_parent = np.where(parent < 0, root_value, values[np.maximum(parent, 0)])  # (K,)
    return ((values - root_value) + (values - v_parent)) / np.sqrt(np.maximum(leaves, 1))


# -- the trainer ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # holds a batch: identity, not value, comparison
class TreePath:
    """One generated sequence of a tree (a root chain or a branch): row ``row`` of ``batch``.

    Attributes:
        group: The prompt's position in the step.
        chain: The root chain (index into the step's paths) whose tree it belongs to.
        parent: The path it branched from (-1 for chains).
        fork: Response position where its own tokens start (0 for chains).
        batch: The rollout batch holding it.
        row: Its row in ``batch``.
    """

    group: int
    chain: int
    parent: int
    fork: int
    batch: RolloutBatch
    row: int

    @property
    def response(self) -> npt.NDArray[np.int64]:
        """Full response ids: the shared prefix and the tokens it generated."""
        return np.concatenate([self.batch.prefix_ids[self.row], self.batch.new_ids[self.row]]).astype(np.int64)

    @property
    def reward(self) -> float:
        """The env's reward; nan (unscorable) counts as 0."""
        return float(np.nan_to_num(self.batch.rewards[self.row], nan=0.0))


@dataclass(frozen=True)
class Fork:
    """A chosen fork: the path it is in, the position of the resampled token and depth / length."""

    path: int
    depth: int
    ratio: float


def segment_samples(tree: SegmentTree, paths: Sequence[TreePath], advantages: npt.NDArray[np.float64]) -> TrainSamples:
    """One row per segment: context = prompt + response before it (no loss), target = its tokens.

    Args:
        tree: One prompt's tree over ``paths`` (sequence ``i`` of the tree is ``paths[i]``).
        paths: The prompt's sequences.
        advantages: (K,) R(s) of every segment.
    """
    responses = [p.response for p in paths]
    contexts, targets = [], []
    for seq, a, b in zip(tree.seq, tree.start, tree.end):
        path = paths[int(seq)]
        contexts.append(np.concatenate([path.batch.prompt_ids[path.row], responses[seq][:a]]).astype(np.int64))
        targets.append(responses[seq][a:b])
    return TrainSamples(contexts, targets, advantages.astype(np.float32),
                        np.full(len(tree), GLOBAL_STREAM, dtype=np.int64))


def path_samples(tree: SegmentTree, paths: Sequence[TreePath], advantages: npt.NDArray[np.float64]) -> TrainSamples:
    """One row per root-to-leaf path: context = the prompt, target = the leaf's response, and each
    token the advantage R(s) of the segment it lies in (TreeRL's rows).

    Args:
        tree: One prompt's tree over ``paths`` (sequence ``i`` of the tree is ``paths[i]``).
        paths: The prompt's sequences (leaves).
        advantages: (K,) R(s) of every segment.

    Returns:
        Samples with ``token_advantages`` set; ``advantages`` holds each row's token mean of them.
    """
    contexts, targets, token_adv = [], [], []
    for i, path in enumerate(paths):
        response = path.response
        adv = np.full(response.shape[0], np.nan, dtype=np.float64)
        node = int(tree.leaf_node[i])
        while node >= 0:  # the leaf's segment and every ancestor segment: they tile [0, len)
            adv[tree.start[node]:tree.end[node]] = advantages[node]
            node = int(tree.parent[node])
        if np.isnan(adv).any():
            raise AssertionError(f"Path {i}'s segments do not cover its response; the tree is inconsistent.")
        contexts.append(np.asarray(path.batch.prompt_ids[path.row], dtype=np.int64))
        targets.append(response)
        token_adv.append(adv.astype(np.float32))
    means = np.array([a.mean() if a.size else 0.0 for a in token_adv], dtype=np.float32)
    return TrainSamples(contexts, targets, means, np.full(len(paths), GLOBAL_STREAM, dtype=np.int64),
                        token_advantages=token_adv)


def prompt_tree(
    paths: Sequence[TreePath], members: Sequence[int]
) -> tuple[SegmentTree, npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """One prompt's tree over ``paths[i] for i in members`` (parents before children): the tree, the
    leaves' rewards and every segment's R(s) (:func:`segment_advantages`)."""
    local = {g: k for k, g in enumerate(members)}
    group = [paths[i] for i in members]
    tree = build_tree([local[p.parent] if p.parent >= 0 else -1 for p in group],
                      [p.fork for p in group], [p.response.shape[0] for p in group])
    rewards = np.array([p.reward for p in group])
    values, leaves = node_values(tree, rewards)
    return tree, rewards, segment_advantages(values, leaves, tree.parent, float(rewards.mean()))


@dataclass
class TreeRollouts(Rollouts):
    """The root chains (``roots[0]``) plus every sequence of the step's trees, the forks and their branches."""

    paths: list[TreePath] = field(default_factory=list)
    forks: list[Fork] = field(default_factory=list)
    branches: list[RolloutBatch] = field(default_factory=list)


class TreeRLTrainer(GRPOTrainer):
    """GRPO's trainer with tree rollouts and TreeRL's segment advantages (see the module docstring)."""

    algo = "treerl"
    config: TreeConfig

    def __init__(self, config: TreeConfig, **kwargs: Any) -> None:
        if not isinstance(config, TreeConfig):
            raise TypeError(f"Expected a TreeConfig, got {type(config).__name__}.")
        # Strategy state exists before GRPOTrainer.__init__, which may resume it from a checkpoint.
        self.fork_rng = np.random.default_rng([config.seed, FORK_RNG_SALT])
        super().__init__(config, **kwargs)
        self.texts = token_texts(self.env.codec.decode, self.envs.vocab_size) if config.stop_words else []

    def roots_per_prompt(self) -> int:
        """M = ``tree_chains`` root chains per prompt (``group_size`` is not used)."""
        return self.config.tree_chains

    # -- the overridden stages --------------------------------------------------------------------
    def collect(self) -> Rollouts:
        """M chains per prompt, then L rounds of forks (T branches from each)."""
        cfg = self.config
        self.model.eval()
        problems = self.next_problems(cfg.prompts_per_step)
        roots = self.sample_roots(problems, cfg.tree_chains)
        metrics = self.rollout_metrics([roots])
        paths = [TreePath(int(roots.group[r]), r, -1, 0, roots, r) for r in range(len(roots))]
        frontier = list(range(len(paths)))
        forks: list[Fork] = []
        branches: list[RolloutBatch] = []
        unforkable: list[float] = []
        for _ in range(cfg.tree_rounds):
            chosen, empty = self.choose_forks(paths, frontier)
            unforkable.append(empty)
            if not chosen:
                break
            batch = self.expand(paths, chosen)
            frontier = self.add_branches(paths, chosen, batch)
            forks += chosen
            branches.append(batch)
        metrics.update(self._fork_metrics(forks, branches))
        metrics["tree/unforkable_fraction"] = float(np.mean(unforkable)) if unforkable else 0.0
        signal = np.ones(len(roots), dtype=bool)  # dynamic sampling acts per tree, in tree_samples
        return TreeRollouts([roots], [signal], metrics, paths, forks, branches)

    def compute_advantages(self, rollouts: Rollouts) -> tuple[TrainSamples, dict[str, float]]:
        """Every prompt's tree as rows with advantages R(s) (:meth:`tree_samples`; per path or per segment)."""
        if not isinstance(rollouts, TreeRollouts):
            raise TypeError(f"Expected the TreeRollouts of TreeRLTrainer.collect, got {type(rollouts).__name__}.")
        return self.tree_samples(rollouts.paths)

    def choose_forks(self, paths: Sequence[TreePath], frontier: Sequence[int]) -> tuple[list[Fork], float]:
        """Up to N forks per chain's tree among the positions the frontier paths generated.

        Returns:
            The forks (ordered by path, then depth) and the fraction of chain-trees with no allowed
            position.
        """
        cfg = self.config
        pools: dict[int, list[int]] = {}
        for i in frontier:
            pools.setdefault(paths[i].chain, []).append(i)
        out: list[Fork] = []
        empty = 0
        for members in pools.values():
            owner, depth, surprisal, allowed = [], [], [], []
            for i in members:
                path = paths[i]
                response = path.response
                n = response.shape[0]
                stop = stop_index(response, self.texts, cfg.stop_words)
                allowed.append(allowed_forks(n, start=path.fork + 1, stop=stop,
                                             skip_first_fraction=cfg.skip_first_fraction,
                                             skip_last_tokens=cfg.skip_last_tokens))
                s = np.full(n, -np.inf)
                s[path.fork:] = -np.asarray(path.batch.logprobs[path.row], dtype=np.float64)
                surprisal.append(s)
                owner.append(np.full(n, i))
                depth.append(np.arange(n))
            pool_allowed = np.concatenate(allowed)
            empty += int(not pool_allowed.any())
            picks = select_forks(np.concatenate(surprisal), pool_allowed, cfg.tree_forks, cfg.fork_selection,
                                 self.fork_rng)
            flat_owner, flat_depth = np.concatenate(owner), np.concatenate(depth)
            for p in picks:
                i, d = int(flat_owner[p]), int(flat_depth[p])
                out.append(Fork(i, d, d / paths[i].response.shape[0]))
        out.sort(key=lambda f: (f.path, f.depth))
        return out, empty / max(len(pools), 1)

    def add_branches(self, paths: list[TreePath], forks: Sequence[Fork], batch: RolloutBatch) -> list[int]:
        """Appends the ``tree_branches`` continuations of every fork (rows of ``batch``, fork-major) to
        ``paths``; returns their indices."""
        added = []
        for j, fork in enumerate(forks):
            src = paths[fork.path]
            for k in range(self.config.tree_branches):
                added.append(len(paths))
                paths.append(TreePath(src.group, src.chain, fork.path, fork.depth, batch, j * self.config.tree_branches + k))
        return added

    def expand(self, paths: Sequence[TreePath], forks: Sequence[Fork]) -> RolloutBatch:
        """T continuations from the state before each fork token: one batched branch_rollouts call."""
        cfg = self.config
        states = [paths[f.path].batch.prefix_state(paths[f.path].row, f.depth) for f in forks]
        # The env is sized once for the most a round can fork (N per chain's tree).
        most = cfg.prompts_per_step * cfg.tree_chains * cfg.tree_forks * cfg.tree_branches
        return self.branch(states, cfg.tree_branches, reserve=most)

    def tree_samples(self, paths: Sequence[TreePath]) -> tuple[TrainSamples, dict[str, float]]:
        """Every prompt's tree as rows (per path or per segment, ``tree_weighting``) with advantages R(s);
        drops all-agreeing trees if asked."""
        by_group: dict[int, list[int]] = {}
        for i, path in enumerate(paths):
            by_group.setdefault(path.group, []).append(i)
        parts: list[TrainSamples] = []
        zero_var, leaves_per_prompt = [], []
        segments = 0
        for members in by_group.values():
            group = [paths[i] for i in members]
            tree, rewards, adv = prompt_tree(paths, members)
            segments += len(tree)
            zero_var.append(bool(np.all(rewards == rewards[0])))
            leaves_per_prompt.append(len(group))
            if zero_var[-1] and self.config.dynamic_sampling == "drop":
                continue
            rows = path_samples if self.config.tree_weighting == "paths" else segment_samples
            parts.append(rows(tree, group, adv))
        samples = TrainSamples.concat(parts)
        lengths = [len(t) for t in samples.targets]
        correct = [p.batch.correct[p.row] is True for p in paths]
        token_adv = np.concatenate([samples.row_token_advantages(i) for i in range(len(samples))]
                                   ) if len(samples) else np.zeros(0)
        generated = sum(len(p.batch.new_ids[p.row]) for p in paths)
        metrics = {
            "tree/generated_tokens_per_prompt": float(generated) / max(len(by_group), 1),
            "tree/trained_rows": float(len(samples)),
            "tree/leaves_per_prompt": float(np.mean(leaves_per_prompt)),
            "tree/leaf_accuracy": float(np.mean(correct)),
            "tree/leaf_reward_mean": float(np.mean([p.reward for p in paths])),
            "tree/zero_variance_fraction": float(np.mean(zero_var)),
            "tree/segments": float(segments),
            "tree/row_length_mean": float(np.mean(lengths)) if lengths else 0.0,
            "adv/global_count": float(len(samples)),
            "adv/global_abs_mean": float(np.abs(token_adv).mean()) if token_adv.size else 0.0,
        }
        return samples, metrics

    def _fork_metrics(self, forks: Sequence[Fork], branches: Sequence[RolloutBatch]) -> dict[str, float]:
        """Fork depths and branch outcomes, named like DEEP-GRPO's pivot metrics for side-by-side plots."""
        t = self.config.tree_branches
        ratios = np.array([f.ratio for f in forks])
        hist = np.histogram(ratios, bins=5, range=(0.0, 1.0))[0] if forks else np.zeros(5)
        rewards = np.concatenate([np.nan_to_num(b.rewards, nan=0.0) for b in branches]) if branches else np.zeros(0)
        success = (rewards > 0.0).reshape(-1, t)  # (forks, T)
        lengths = [len(x) for b in branches for x in b.new_ids]
        entropies = np.concatenate([e for b in branches for e in b.entropies]) if lengths else np.zeros(0)
        out = {
            "tree/forks": float(len(forks)),
            "pivot/count": float(len(forks)),
            "pivot/depth_tokens_mean": float(np.mean([f.depth for f in forks])) if forks else 0.0,
            "pivot/ratio_mean": float(ratios.mean()) if forks else 0.0,
            "pivot/root_fraction": 0.0,  # forks never resample the first token
            "pivot/branch_success_rate": float(success.mean()) if forks else 0.0,
            "pivot/unrecoverable_fraction": float((~success.any(axis=1)).mean()) if forks else 0.0,
            "pivot/branch_response_length": float(np.mean(lengths)) if lengths else 0.0,
            "pivot/branch_entropy": float(entropies.mean()) if entropies.size else float("nan"),
            "pivot/branch_generated_tokens": float(sum(b.generated_tokens for b in branches)),
            "pivot/branch_prefilled_tokens": float(sum(b.prefilled_tokens for b in branches)),
            "perf/branch_prefill_s": float(sum(b.prefill_s for b in branches)),
            "perf/branch_decode_s": float(sum(b.decode_s for b in branches)),
        }
        out.update({f"pivot/ratio_hist_{i}": float(h) for i, h in enumerate(hist)})
        return out

    # -- checkpointed strategy state --------------------------------------------------------------
    def strategy_state(self) -> dict[str, Any]:
        return {"fork_rng": self.fork_rng.bit_generator.state}

    def load_strategy_state(self, state: dict[str, Any]) -> None:
        self.fork_rng.bit_generator.state = state["fork_rng"]


class UniformTreeTrainer(TreeRLTrainer):
    """The uniform random branching baseline: TreeRL's tree and budget, forks at random positions."""

    algo = "uniform-tree"

    def __init__(self, config: TreeConfig, **kwargs: Any) -> None:
        if getattr(config, "fork_selection", None) != "uniform":
            raise ValueError(
                f"Expected `fork_selection` 'uniform' for the uniform-tree baseline, got "
                f"{getattr(config, 'fork_selection', None)!r}; use TreeRLTrainer (algo 'treerl') for entropy forks."
            )
        super().__init__(config, **kwargs)


__all__ = [
    "Fork",
    "SegmentTree",
    "TreeConfig",
    "TreePath",
    "TreeRLTrainer",
    "TreeRollouts",
    "UniformTreeConfig",
    "UniformTreeTrainer",
    "allowed_forks",
    "build_tree",
    "node_values",
    "path_samples",
    "prompt_tree",
    "segment_advantages",
    "segment_samples",
    "select_forks",
    "stop_index",
    "token_texts",
]
