"""The recoverability probe: how often resampling from each position of a failed trajectory succeeds.

DEEP-GRPO (docs/methods.md §2) bets on deep states of failed trajectories from which resampling
still succeeds. :func:`run_probe` measures that bet for any registered env and any policy: it samples
one response per problem until it holds ``failed`` failed ones, then restores (``env.reset_to``)
every candidate position of each (the root plus every segment end, exactly DEEP-GRPO's candidates)
and samples ``branches`` continuations from each. It writes to ``output_dir``:

- ``positions.csv``: one row per (trajectory, candidate): depth, r, the candidate's surprisal and
  boundary entropy (the features of deepgrpo_agent/pivot_utility.py), successes out of K, mean
  branch length;
- ``recoverability.json``: P(any branch succeeds | position), per-branch success, the fraction of
  positions with mixed outcomes (a non-zero local advantage), by candidate index and by r; and what
  each pivot utility would get on these trajectories (expected mixed pivots, per branch token);
- ``recoverability.png``: those curves.

A bound worth knowing when reading the curves (docs/recoverability.md): for one prompt, with V_d the
success probability from the state at depth d of a trajectory, E[V_d | the trajectory failed] =
E[V_d (1 - V_d)] / (1 - V_0) <= V_0, so per-branch success averaged over failed trajectories can
never exceed the root's at any depth; what deep pivots can win is mixed outcomes per branch token.

Run it with ``deepgrpo recoverability`` (fields as flags, see ``--help``).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from deepgrpo_agent.config import check_types, to_dict


def _testbed_kwargs() -> dict[str, Any]:
    from deepgrpo_agent.testbed import TESTBED_ENV_KWARGS

    return dict(TESTBED_ENV_KWARGS)


@dataclass
class RecoverabilityConfig:
    """The probe: which env, policy and failed trajectories, how many branches (defaults: the arithmetic testbed)."""

    env_id: str = "Arithmetic-v0"
    """Registered env id."""
    env_kwargs: dict[str, Any] = field(default_factory=_testbed_kwargs)
    """Env arguments (JSON on the command line)."""
    model: str = "arithmetic-testbed"
    """Policy: "arithmetic-testbed", "deep-testbed", "default" (SmolLM2-135M-Instruct) or a checkpoint directory."""
    failed: int = 32
    """Failed trajectories to probe (fewer when the problems run out first)."""
    branches: int = 8
    """K: continuations sampled from every candidate position."""
    problems: int = 512
    """Problems sampled from (one response each) to find the failures: the env's last this-many (the trainers' held-out slice)."""
    segment: Literal["sentence", "line", "tokens"] = "line"
    """Candidate positions as in DEEP-GRPO: after '.' tokens, after newlines, or every `segment_tokens`."""
    segment_tokens: int = 100
    """Tokens per segment when `segment` is 'tokens'."""
    max_new_tokens: int = 0
    """Response budget; 0 = the env's own (max_response_tokens)."""
    temperature: float = 1.0
    """Sampling temperature of roots and branches."""
    top_p: float = 1.0
    """Nucleus sampling of roots and branches."""
    failure_threshold: float = 0.0
    """Reward <= this is a failure (and a failed branch)."""
    truncated_is_failure: bool = True
    """Responses that hit the budget count as failures (DEEP-GRPO's rule for branches)."""
    chunk: int = 256
    """Branch rows generated per call (memory vs speed)."""
    seed: int = 0
    """Seed of sampling."""
    device: str = "cpu"
    """Torch device ("cpu", "cuda", "auto")."""
    dtype: str = "auto"
    """Model dtype ("auto": fp32 on the CPU, bf16 on CUDA)."""
    engine: str = "hf"
    """Generation engine (see `deepgrpo train --help`)."""
    output_dir: str = "runs/recoverability"
    """Where positions.csv, recoverability.json and recoverability.png go."""
    plots: bool = True
    """Write the PNG (needs matplotlib)."""

    def __post_init__(self) -> None:
        check_types(self)
        for name, low in (("failed", 1), ("branches", 1), ("problems", 1), ("segment_tokens", 1),
                          ("max_new_tokens", 0), ("chunk", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"Expected `{name}` >= {low}, got {getattr(self, name)!r}.")
        if self.segment not in ("sentence", "line", "tokens"):
            raise ValueError(f"Expected `segment` in ('sentence', 'line', 'tokens'), got {self.segment!r}.")
        if not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(f"Expected `temperature` > 0 and `top_p` in (0, 1], got {self.temperature}, {self.top_p}.")


POSITION_COLUMNS = ("trajectory", "problem_index", "candidate", "candidates", "depth", "response_length", "ratio",
                    "surprisal", "entropy", "successes", "branches", "branch_tokens")


def _load(cfg: RecoverabilityConfig) -> tuple[Any, Any, Any]:
    """(model, tokenizer, device) for ``cfg.model``."""
    from deepgrpo_agent.policy import load_policy, resolve_device, resolve_dtype

    device = resolve_device(cfg.device)
    model, tokenizer = load_policy(cfg.model, device=device, dtype=resolve_dtype(cfg.dtype, device))
    return model.eval(), tokenizer, device


def run_probe(cfg: RecoverabilityConfig, *, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Runs the probe (see the module docstring) and writes its outputs; returns the summary.

    Args:
        cfg: The probe.
        model: A ready causal LM instead of loading ``cfg.model`` (then ``tokenizer`` goes with it).
        tokenizer: The model's tokenizer, for envs that take one.

    Raises:
        ValueError: If no sampled response failed (nothing to probe).
    """
    import torch

    import envs_registry
    from deepgrpo_agent.engine import make_engine
    from deepgrpo_agent.engine.protocol import SamplingParams
    from deepgrpo_agent.env_pool import registry_env
    from deepgrpo_agent.pivot_utility import candidate_features
    from deepgrpo_agent.pivots import boundary_table, candidates, segment_ends
    from deepgrpo_agent.rollout import branch_rollouts, collect_rollouts

    envs_registry.check_id(cfg.env_id)
    t0 = time.perf_counter()
    if model is None:
        model, tokenizer, _ = _load(cfg)
    import gymnasium as gym

    kwargs = dict(cfg.env_kwargs)
    entry = envs_registry.entry(cfg.env_id)
    if tokenizer is not None and entry is not None and entry.takes_tokenizer:
        kwargs.setdefault("tokenizer", tokenizer)
    if cfg.max_new_tokens:
        kwargs["max_response_tokens"] = cfg.max_new_tokens
    probe_env: Any = gym.make_vec(cfg.env_id, num_envs=1, autoreset_mode="Disabled", **kwargs)
    budget = int(probe_env.limits.max_response_tokens)
    n_problems = int(probe_env.num_problems)
    vocab = int(probe_env.single_action_space.n)
    probe_env.close()
    engine_cfg = _EngineConfig(engine=cfg.engine, max_new_tokens=budget, temperature=cfg.temperature, top_p=cfg.top_p,
                               device=cfg.device, dtype=cfg.dtype)
    engine = make_engine(engine_cfg, model, vocab_size=vocab)
    params = SamplingParams(cfg.temperature, cfg.top_p, budget)
    generator = torch.Generator().manual_seed(cfg.seed)
    indices = np.arange(max(n_problems - cfg.problems, 0), n_problems)
    width = max(cfg.chunk, cfg.branches)
    venv = registry_env(cfg.env_id, max(width, min(len(indices), 256)), budget=budget,
                        env_kwargs=cfg.env_kwargs, tokenizer=tokenizer)
    boundary = None if cfg.segment == "tokens" else boundary_table(venv.codec.decode, vocab, cfg.segment)

    def ok(rewards: npt.NDArray[np.float64], truncated: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        good = np.nan_to_num(rewards, nan=0.0) > cfg.failure_threshold
        out: npt.NDArray[np.bool_] = good & ~truncated if cfg.truncated_is_failure else good
        return out

    rows: list[dict[str, Any]] = []
    states: list[Any] = []
    roots_sampled, root_successes = 0, 0
    with torch.no_grad():
        for start in range(0, len(indices), venv.num_envs):
            if len({r["trajectory"] for r in rows}) >= cfg.failed:
                break
            batch = collect_rollouts(venv, engine, indices[start:start + venv.num_envs], 1, params, generator=generator)
            success = ok(batch.rewards, batch.truncated)
            roots_sampled += len(batch)
            root_successes += int(success.sum())
            for row in np.flatnonzero(~success):
                traj = len({r["trajectory"] for r in rows})
                if traj >= cfg.failed:
                    break
                response = np.asarray(batch.states[row].response_ids)
                ends = segment_ends(response, mode=cfg.segment, boundary_ids=boundary, segment_tokens=cfg.segment_tokens)
                if ends.size == 0:
                    continue
                cand = candidates(ends, max_depth=budget)
                feats = candidate_features(cand, ends, batch.logprobs[row], batch.entropies[row])
                for i, depth in enumerate(cand.depths):
                    rows.append({"trajectory": traj, "problem_index": int(batch.problem_index[row]), "candidate": i,
                                 "candidates": int(cand.depths.size), "depth": int(depth),
                                 "response_length": int(response.size), "ratio": float(cand.ratios[i]),
                                 "surprisal": float(feats.surprisal[i]), "entropy": float(feats.entropy[i])})
                    states.append(batch.prefix_state(int(row), int(depth)))
        if not rows:
            raise ValueError(
                f"Expected some failed responses to probe, got none in {roots_sampled} sampled ones of {cfg.env_id} "
                f"with {cfg.model}; raise `problems` or probe a harder env."
            )
        per_call = max(width // cfg.branches, 1)
        for k in range(0, len(states), per_call):
            branch = branch_rollouts(venv, engine, states[k:k + per_call], cfg.branches, params, generator=generator)
            wins = ok(branch.rewards, branch.truncated).reshape(-1, cfg.branches)
            lengths = np.array([len(x) for x in branch.new_ids], dtype=np.float64).reshape(-1, cfg.branches)
            for j in range(wins.shape[0]):
                rows[k + j].update(successes=int(wins[j].sum()), branches=cfg.branches,
                                   branch_tokens=float(lengths[j].mean()))
    venv.close()
    summary = summarize(rows, cfg.branches)
    summary.update(config=to_dict(cfg), roots_sampled=roots_sampled,
                   root_sample_accuracy=root_successes / max(roots_sampled, 1), seconds=time.perf_counter() - t0)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "positions.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(POSITION_COLUMNS))
        w.writeheader()
        w.writerows(rows)
    (out / "recoverability.json").write_text(json.dumps(summary, indent=1) + "\n")
    if cfg.plots:
        plot_probe(summary, out / "recoverability.png")
    print_summary(summary)
    return summary


@dataclass
class _EngineConfig:
    """The fields :func:`~deepgrpo_agent.engine.make_engine` reads from a run config."""

    engine: str
    max_new_tokens: int
    temperature: float
    top_p: float
    device: str
    dtype: str
    engine_kwargs: dict[str, Any] = field(default_factory=dict)


R_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
"""Right-closed bins of normalized depth r: (0, 0.2], (0.2, 0.4], ... (r = 0.4 falls in the second)."""


def _curve(groups: Sequence[npt.NDArray[np.float64]]) -> dict[str, list[float]]:
    """Per group of success fractions: count, P(any), per-branch success, mixed fraction."""
    def stat(f: Any, g: npt.NDArray[np.float64]) -> float:
        return float(f(g)) if g.size else float("nan")

    return {
        "positions": [int(g.size) for g in groups],
        "p_any": [stat(lambda x: (x > 0).mean(), g) for g in groups],
        "per_branch": [stat(np.mean, g) for g in groups],
        "mixed": [stat(lambda x: ((x > 0) & (x < 1)).mean(), g) for g in groups],
    }


def summarize(rows: Sequence[dict[str, Any]], k: int) -> dict[str, Any]:
    """The probe's curves and the per-utility table from its position rows (see :func:`run_probe`)."""
    frac = np.array([r["successes"] / r["branches"] for r in rows], dtype=np.float64)
    cand = np.array([r["candidate"] for r in rows])
    ratio = np.array([r["ratio"] for r in rows], dtype=np.float64)
    by_index = _curve([frac[cand == i] for i in range(int(cand.max()) + 1)])
    bins = np.digitize(ratio, R_BINS[1:-1], right=True)
    by_ratio = _curve([frac[bins == b] for b in range(len(R_BINS) - 1)])
    counts = np.array(by_index["positions"])
    enough = counts >= min(5, int(counts.max()))  # the peak among indices with a few positions at least
    peak = int(np.argmax(np.where(enough, np.asarray(by_index["p_any"]), -1.0)))
    return {
        "branches": k,
        "trajectories": len({r["trajectory"] for r in rows}),
        "positions": len(rows),
        "p_any": float((frac > 0).mean()),
        "per_branch": float(frac.mean()),
        "mixed_fraction": float(((frac > 0) & (frac < 1)).mean()),
        "by_candidate_index": by_index,
        "r_bins": list(R_BINS),
        "by_ratio": by_ratio,
        "peak_candidate_index": peak,
        "utilities": utility_table(rows, k),
    }


def utility_table(rows: Sequence[dict[str, Any]], k: int, gamma: float = 2.0) -> dict[str, dict[str, float]]:
    """What each pivot utility (p = 1) would get on the probed trajectories, in expectation over its Q.

    ``mixed``: expected fraction of pivots whose K branches have mixed outcomes (a non-zero local
    advantage); ``any``: with at least one success; ``branch_tokens``: expected tokens per branch;
    ``mixed_per_kilotoken``: mixed pivots per 1000 branch tokens, all ``k`` branches of a pivot counted
    (the cost model; the trainer's ``pivot/mixed_per_kilotoken``). ``paper`` uses
    P_phi fitted on these positions' (r, any) pairs (a converged P_phi), ``paper-phi1`` P_phi = 1 (the
    start of training), ``oracle`` the hindsight-best position (a mixed one if any, the most successful among those).
    """
    from deepgrpo_agent.pivots import fit_logistic, utility

    by_traj: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_traj.setdefault(int(row["trajectory"]), []).append(row)
    ratio_all = np.array([r["ratio"] for r in rows], dtype=np.float64)
    any_all = np.array([r["successes"] > 0 for r in rows], dtype=np.float64)
    w, b = fit_logistic(ratio_all, any_all) if 0 < any_all.sum() < any_all.size else (0.0, 0.0)
    names = ("paper", "paper-phi1", "uniform", "root", "surprisal", "entropy", "oracle")
    acc: dict[str, list[npt.NDArray[np.float64]]] = {n: [] for n in names}
    for traj in by_traj.values():
        rr = np.array([x["ratio"] for x in traj], dtype=np.float64)
        s = np.array([x["successes"] / x["branches"] for x in traj], dtype=np.float64)
        tok = np.array([x["branch_tokens"] for x in traj], dtype=np.float64)
        mixed = ((s > 0) & (s < 1)).astype(np.float64)
        c = rr.size

        def top(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
            m = (v == v.max()).astype(np.float64)
            out: npt.NDArray[np.float64] = m / m.sum()
            return out

        q = {
            "paper": utility(rr, 1.0 / (1.0 + np.exp(-(w * rr + b))), gamma),
            "paper-phi1": utility(rr, np.ones(c), gamma),
            "uniform": np.full(c, 1.0 / c),
            "root": np.eye(c)[0],
            "surprisal": top(np.array([x["surprisal"] for x in traj], dtype=np.float64)),
            "entropy": top(np.array([x["entropy"] for x in traj], dtype=np.float64)),
            "oracle": top(mixed * 10 + s),
        }
        for n in names:
            acc[n].append(np.array([q[n] @ mixed, q[n] @ (s > 0), q[n] @ tok, q[n] @ rr]))
    table = {}
    for n in names:
        a = np.stack(acc[n])
        table[n] = {"mixed": float(a[:, 0].mean()), "any": float(a[:, 1].mean()), "branch_tokens": float(a[:, 2].mean()),
                    "mixed_per_kilotoken": float(1000 * a[:, 0].mean() / max(k * a[:, 2].mean(), 1e-9)),
                    "mean_ratio": float(a[:, 3].mean())}
    table["paper"]["phi_w"], table["paper"]["phi_b"] = float(w), float(b)
    return table


def print_summary(summary: dict[str, Any]) -> None:
    """The probe's curves and utility table as Markdown."""
    k = summary["branches"]
    print(f"\n{summary['trajectories']} failed trajectories, {summary['positions']} positions, K = {k}; "
          f"root sample accuracy {summary.get('root_sample_accuracy', float('nan')):.3f}\n")
    idx = summary["by_candidate_index"]
    print("| candidate index | positions | P(any of K) | per-branch success | mixed |\n|---|---|---|---|---|")
    for i, n in enumerate(idx["positions"]):
        print(f"| {i} | {n} | {idx['p_any'][i]:.3f} | {idx['per_branch'][i]:.3f} | {idx['mixed'][i]:.3f} |")
    rb, br = summary["r_bins"], summary["by_ratio"]
    print("\n| r bin | positions | P(any of K) | per-branch success | mixed |\n|---|---|---|---|---|")
    for i, n in enumerate(br["positions"]):
        print(f"| ({rb[i]:.1f}, {rb[i + 1]:.1f}] | {n} | {br['p_any'][i]:.3f} | {br['per_branch'][i]:.3f} | "
              f"{br['mixed'][i]:.3f} |")
    print("\n| utility (p = 1) | mixed pivots | any success | tokens per branch | mixed per 1k branch tokens | mean r |")
    print("|---|---|---|---|---|---|")
    for name, u in summary["utilities"].items():
        print(f"| {name} | {u['mixed']:.3f} | {u['any']:.3f} | {u['branch_tokens']:.1f} | "
              f"{u['mixed_per_kilotoken']:.2f} | {u['mean_ratio']:.2f} |")


def plot_probe(summary: dict[str, Any], path: Path) -> Path:
    """Two panels: the curves by candidate index and by normalized depth r."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("The plot needs matplotlib: pip install matplotlib (or plots=False).") from e
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    idx, br = summary["by_candidate_index"], summary["by_ratio"]
    x_idx = np.arange(len(idx["positions"]))
    edges = np.asarray(summary["r_bins"])
    x_r = (edges[1:] + edges[:-1]) / 2
    for ax, x, c, label in ((axes[0], x_idx, idx, "candidate index (0 = root, i = after segment i)"),
                            (axes[1], x_r, br, "normalized depth r (bin centre)")):
        ax.plot(x, c["p_any"], marker="o", label=f"P(any of K={summary['branches']} succeeds)")
        ax.plot(x, c["per_branch"], marker="s", label="per-branch success")
        ax.plot(x, c["mixed"], marker="^", label="mixed outcomes (non-zero local advantage)")
        ax.set_xlabel(label)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    cfg = summary.get("config", {})
    fig.suptitle(f"recoverability of {summary['trajectories']} failed trajectories: {cfg.get('env_id')} "
                 f"{cfg.get('env_kwargs', {})} · model {cfg.get('model')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["POSITION_COLUMNS", "R_BINS", "RecoverabilityConfig", "plot_probe", "print_summary", "run_probe",
           "summarize", "utility_table"]
