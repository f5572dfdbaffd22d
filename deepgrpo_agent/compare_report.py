"""The comparison's report: curves on a common grid, paired-by-seed statistics, tables and plots.

:func:`deepgrpo_agent.compare.run_comparison` trains the runs and :func:`~deepgrpo_agent.compare.summarize`
aggregates them; this module turns the records and the summary into what a reader sees: ``runs.csv``,
``results.csv``, ``paired.csv``, ``tables.md``, ``results.json`` and the plots. It imports nothing from
``compare`` (it reads the config through :class:`ReportConfig`), so the report can be rebuilt from stored
``result.json`` files alone.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class ReportConfig(Protocol):
    """What the report reads of a :class:`~deepgrpo_agent.compare.CompareConfig` (kept as a protocol, so
    this module does not import ``compare``)."""

    @property
    def strategies(self) -> tuple[str, ...]: ...
    @property
    def seeds(self) -> tuple[int, ...]: ...
    @property
    def baselines(self) -> tuple[str, ...]: ...
    @property
    def protocol(self) -> str: ...
    @property
    def token_budget(self) -> int: ...
    @property
    def steps(self) -> int: ...
    @property
    def num_evals(self) -> int: ...
    @property
    def env_id(self) -> str: ...
    @property
    def env_kwargs(self) -> dict[str, Any]: ...
    @property
    def model(self) -> str: ...
    @property
    def pass_k(self) -> int: ...


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, allow_nan=True)
    os.replace(tmp, path)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def token_grid(cfg: ReportConfig) -> np.ndarray:
    """The marks where curves of different runs are compared: 0, budget/num_evals, ..., budget, in
    generated tokens (protocol "tokens") or optimizer steps (protocol "steps")."""
    end = float(cfg.token_budget if cfg.protocol == "tokens" else cfg.steps)
    return np.linspace(0.0, end, cfg.num_evals + 1)


def x_axis(cfg: ReportConfig) -> str:
    """The curves' x axis: "tokens" (generated tokens) or "steps" (optimizer steps), by protocol."""
    return "tokens" if cfg.protocol == "tokens" else "steps"


def accuracy_at(record: Mapping[str, Any], grid: np.ndarray, key: str = "accuracy", x: str = "tokens") -> np.ndarray:
    """A run's held-out ``key`` ("accuracy": greedy, "sample_accuracy": sampled, "pass_at_k")
    interpolated at ``grid`` (``x`` = "tokens" or "steps"; evaluations happen at the first step end past
    each mark, so each run is read off at the same budgets); all nan when the run did not measure it."""
    curve = record["eval_curve"]
    y = np.asarray(curve.get(key, []), dtype=np.float64)
    xs = np.asarray(curve.get(x, []), dtype=np.float64)
    if y.size == 0 or xs.size != y.size or not np.isfinite(y).all():
        return np.full(grid.shape, np.nan)
    out: np.ndarray = np.interp(grid, xs, y)
    return out


PAIRED_METRICS = ("final_accuracy", "best_accuracy", "final_sample_accuracy", "best_sample_accuracy",
                  "final_pass_at_k", "best_pass_at_k", "final_entropy", "final_response_length")
"""Record values compared with each baseline, paired by seed (``accuracy`` is greedy accuracy)."""


def baselines_of(cfg: ReportConfig) -> list[str]:
    """The baselines the tables compare with: ``cfg.baselines`` that are in ``cfg.strategies``, else the first strategy."""
    return [b for b in cfg.baselines if b in cfg.strategies] or [cfg.strategies[0]]


def paired_rows(cfg: ReportConfig, records: Sequence[Mapping[str, Any]],
                metrics: Sequence[str] = PAIRED_METRICS) -> list[dict[str, Any]]:
    """Every (strategy, baseline, metric): the paired-by-seed difference strategy - baseline over the
    seeds both ran (:func:`~deepgrpo_agent.stats.paired_difference`, 95% t interval and p-value, plus a
    percentile bootstrap interval)."""
    from deepgrpo_agent.stats import bootstrap_ci, paired_difference

    by = {(r["strategy"], r["seed"]): r for r in records if "seed" in r}
    rows = []
    for base in baselines_of(cfg):
        for strategy in cfg.strategies:
            if strategy == base:
                continue
            seeds = [s for s in cfg.seeds if (strategy, s) in by and (base, s) in by]
            for metric in metrics:
                a = [float(by[(strategy, s)].get(metric, float("nan"))) for s in seeds]
                b = [float(by[(base, s)].get(metric, float("nan"))) for s in seeds]
                diff = paired_difference(a, b)
                lo, hi = bootstrap_ci(a, b)
                rows.append({"strategy": strategy, "baseline": base, "metric": metric, **diff.as_dict(),
                             "bootstrap_low": lo, "bootstrap_high": hi, "resolved": diff.excludes_zero()})
    return rows


_SUMMARY_KEYS = ("initial_accuracy", "final_accuracy", "best_accuracy", "initial_sample_accuracy",
                 "final_sample_accuracy", "best_sample_accuracy", "final_pass_at_k", "best_pass_at_k",
                 "final_entropy", "final_response_length", "generated_tokens", "root_rollouts", "branch_rollouts",
                 "rollouts_per_step", "trained_tokens", "processed_tokens", "steps", "train_wall_s", "learning_rate")
_RUN_COLUMNS = ("strategy", "algo", "seed", "learning_rate", "group_size", "initial_accuracy", "final_accuracy",
                "best_accuracy", "initial_sample_accuracy", "final_sample_accuracy", "best_sample_accuracy",
                "initial_pass_at_k", "final_pass_at_k", "best_pass_at_k", "initial_entropy", "final_entropy",
                "initial_response_length", "final_response_length", "generated_tokens", "root_rollouts",
                "branch_rollouts", "rollouts_per_step", "trained_tokens", "processed_tokens", "steps", "train_wall_s")


def write_tables(out: Path, records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> None:
    """``runs.csv`` (one row per run), ``results.csv`` (mean/std per strategy), ``paired.csv`` (paired
    differences against the baselines), ``tables.md`` (what :func:`print_table` prints) and
    ``results.json`` (all of it, with every curve)."""
    with (out / "runs.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(_RUN_COLUMNS)
        for r in records:
            w.writerow([r.get(c, float("nan")) for c in _RUN_COLUMNS])
    rows = summary["strategies"]
    scalar = [k for k in rows[0] if "_curve_" not in k]
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(scalar)
        for row in rows:
            w.writerow([row[k] for k in scalar])
    paired = summary.get("paired", [])
    if paired:
        with (out / "paired.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(list(paired[0]))
            for p in paired:
                w.writerow(list(p.values()))
    (out / "tables.md").write_text(format_tables(summary))
    _write_json_atomic(out / "results.json", {**summary, "runs": list(records)})


def format_tables(summary: Mapping[str, Any]) -> str:
    """The results as Markdown: per strategy (mean ± std over seeds: greedy accuracy first, as in the
    paper, then sampled accuracy, pass@k, entropy, response length and the cost of the runs), then the
    paired-by-seed differences against each baseline."""
    rows = summary["strategies"]
    k = summary["config"].get("pass_k", 0)
    if summary.get("protocol", "tokens") == "tokens":
        head = f"Protocol `tokens`: every run spends {summary['token_budget']:,} generated tokens (roots + branches)."
    else:
        head = f"Protocol `steps`: every run takes {summary['steps']:,} optimizer steps."
    lines = [head + " Held-out problems, mean ± std over seeds; final = last evaluation, best = best evaluation "
             "after step 0.", ""]
    cols = ["greedy final", "greedy best", "sampled final", f"pass@{k} final", "entropy final", "length final"]
    keys = ["final_accuracy", "best_accuracy", "final_sample_accuracy", "final_pass_at_k", "final_entropy",
            "final_response_length"]
    lines.append("| strategy | seeds | " + " | ".join(cols) + " |")
    lines.append("|---" * (len(cols) + 2) + "|")
    for r in rows:
        lines.append(f"| {r['strategy']} | {r['seeds']} | "
                     + " | ".join(_pm(r, key, ".1f" if key == "final_response_length" else ".3f") for key in keys) + " |")
    lines += ["", "Cost of each run (mean ± std over seeds): optimizer steps, rollouts per step (roots + branches), "
              "generated tokens, trained tokens (response tokens in the loss), training wall time.", ""]
    lines.append("| strategy | steps | rollouts / step | generated tokens | trained tokens | train wall s | lr |")
    lines.append("|---" * 7 + "|")
    for r in rows:
        lines.append(f"| {r['strategy']} | {_pm(r, 'steps', '.0f')} | {_pm(r, 'rollouts_per_step', '.0f')} | "
                     f"{_pm(r, 'generated_tokens', ',.0f')} | {_pm(r, 'trained_tokens', ',.0f')} | "
                     f"{_pm(r, 'train_wall_s', '.0f')} | {r['learning_rate_mean']:g} |")
    paired = summary.get("paired", [])
    shown = ("final_accuracy", "best_accuracy", "final_sample_accuracy", "final_pass_at_k", "final_entropy")
    names = {"final_accuracy": "greedy final", "best_accuracy": "greedy best", "final_sample_accuracy": "sampled final",
             "final_pass_at_k": f"pass@{k} final", "final_entropy": "entropy final"}
    for base in summary.get("baselines", []):
        mine = [p for p in paired if p["baseline"] == base]
        if not mine:
            continue
        lines += ["", f"Paired by seed, strategy − {base}: mean difference [95% t interval] (p, paired t-test); "
                  "**bold** where the interval excludes 0.", ""]
        lines.append("| strategy | n | " + " | ".join(names[m] for m in shown) + " |")
        lines.append("|---" * (len(shown) + 2) + "|")
        for strategy in dict.fromkeys(p["strategy"] for p in mine):
            cells, n = [], 0
            for m in shown:
                p = next(x for x in mine if x["strategy"] == strategy and x["metric"] == m)
                n = max(n, int(p["n"]))
                text = f"{p['mean']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}] (p={p['p']:.2g})"
                cells.append(f"**{text}**" if p["resolved"] else text)
            lines.append(f"| {strategy} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def print_table(summary: Mapping[str, Any]) -> None:
    """Prints :func:`format_tables`."""
    print("\n" + format_tables(summary))


def _pm(row: Mapping[str, Any], key: str, fmt: str = ".3f") -> str:
    return f"{row[key + '_mean']:{fmt}} ± {row[key + '_std']:{fmt}}"


# -- plots --------------------------------------------------------------------------------------------
def _binned(record: Mapping[str, Any], key: str, grid: np.ndarray, x: str = "tokens") -> np.ndarray:
    """Per-step metric ``key`` of a run averaged within bins ``grid[i-1] < x <= grid[i]`` of ``x``
    ("tokens" or "steps")."""
    curves = record["step_curves"]
    xs = np.asarray(curves.get(x, []), dtype=np.float64)
    y = np.asarray(curves.get(key, []), dtype=np.float64)
    out = np.full(grid.size - 1, np.nan)
    if y.size != xs.size:
        return out
    for i in range(grid.size - 1):
        sel = (xs > grid[i]) & (xs <= grid[i + 1]) & np.isfinite(y)
        if sel.any():
            out[i] = y[sel].mean()
    return out


def plot_comparison(cfg: ReportConfig, records: Sequence[Mapping[str, Any]], out: Path) -> list[Path]:
    """``comparison.png`` (six panels), ``accuracy.png`` (greedy, sampled and pass@k curves, mean ±
    std bands) and ``seeds.png`` (every seed's final greedy accuracy and the paired differences with
    their 95% intervals); returns the written paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("Plots need matplotlib: pip install matplotlib (or set plots=False).") from e
    grid, x = token_grid(cfg), x_axis(cfg)
    xlabel = "generated tokens (roots + branches)" if x == "tokens" else "optimizer steps"
    fine = np.linspace(0.0, float(grid[-1]), 21)
    centers = (fine[1:] + fine[:-1]) / 2
    colors = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(cfg.strategies)}
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    panels = [("rollout/entropy", "entropy of sampled tokens"), ("rollout/response_length", "response length (tokens)"),
              ("pivot/branch_success_rate", "branch success rate"),
              ("rollout/zero_variance_fraction", "zero-variance group fraction")]
    for strategy in cfg.strategies:
        runs = [r for r in records if r["strategy"] == strategy]
        _band(axes[0, 0], grid, np.stack([accuracy_at(r, grid, "accuracy", x) for r in runs]), strategy,
              colors[strategy])
        for ax, (key, _) in zip((axes[0, 1], axes[0, 2], axes[1, 1], axes[1, 2]), panels):
            _band(ax, centers, np.stack([_binned(r, key, fine, x) for r in runs]), strategy, colors[strategy])
    axes[0, 0].set_title(f"held-out greedy accuracy (mean ± std, {len(cfg.seeds)} seeds)")
    for ax, (_, title) in zip((axes[0, 1], axes[0, 2], axes[1, 1], axes[1, 2]), panels):
        ax.set_title(title)
    _pivot_hist(axes[1, 0], cfg, records, colors)
    for ax in axes.flat:
        if ax is not axes[1, 0]:
            ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    budget = f"equal budget {cfg.token_budget:,} tokens" if x == "tokens" else f"equal steps ({cfg.steps})"
    fig.suptitle(f"{cfg.env_id} {cfg.env_kwargs} · model {cfg.model} · {budget}")
    fig.tight_layout()
    paths = [out / "comparison.png", out / "accuracy.png", out / "seeds.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    kinds = [("accuracy", "greedy accuracy"), ("sample_accuracy", "sampled accuracy"), ("pass_at_k", f"pass@{cfg.pass_k}")]
    kinds = [kd for kd in kinds if any(np.isfinite(accuracy_at(r, grid, kd[0], x)).all() for r in records)]
    fig, accs = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.5), squeeze=False)
    for ax, (key, label) in zip(accs[0], kinds):
        for strategy in cfg.strategies:
            runs = [r for r in records if r["strategy"] == strategy]
            _band(ax, grid, np.stack([accuracy_at(r, grid, key, x) for r in runs]), strategy, colors[strategy])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"held-out {label}")
        ax.set_title(f"{label}: mean ± std over {len(cfg.seeds)} seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    _plot_seeds(cfg, records, paths[2], colors, plt)
    return paths


def _plot_seeds(cfg: ReportConfig, records: Sequence[Mapping[str, Any]], path: Path, colors: dict[str, Any],
                plt: Any) -> None:
    """Left: every seed's final greedy accuracy per strategy (the spread). Right: the paired difference
    to the first baseline with its 95% t interval."""
    base = baselines_of(cfg)[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    for i, strategy in enumerate(cfg.strategies):
        ys = [r["final_accuracy"] for r in records if r["strategy"] == strategy]
        left.scatter(np.full(len(ys), i) + np.linspace(-0.15, 0.15, len(ys)), ys, color=colors[strategy], s=18)
        left.hlines(np.mean(ys), i - 0.3, i + 0.3, color=colors[strategy])
    left.set_xticks(range(len(cfg.strategies)), cfg.strategies, rotation=30, ha="right", fontsize=8)
    left.set_ylabel("final held-out greedy accuracy")
    left.set_title("every seed (dots) and the mean (line)")
    rows = [p for p in paired_rows(cfg, records, ("final_accuracy",)) if p["baseline"] == base]
    for i, p in enumerate(rows):
        right.errorbar(p["mean"], i, xerr=[[p["mean"] - p["ci_low"]], [p["ci_high"] - p["mean"]]], fmt="o",
                       color=colors[p["strategy"]], capsize=3)
    right.axvline(0.0, color="k", lw=0.8)
    right.set_yticks(range(len(rows)), [p["strategy"] for p in rows], fontsize=8)
    right.set_xlabel(f"final greedy accuracy − {base} (paired by seed)")
    right.set_title("mean difference and 95% t interval")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _band(ax: Any, x: np.ndarray, ys: np.ndarray, label: str, color: Any) -> None:
    """Mean line and ± std band of ``ys`` (runs x points); points where no run has a value are skipped."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # columns where one run has a value: std is 0 below
        valid = np.isfinite(ys).any(axis=0)
        if not valid.any():
            return
        mean = np.nanmean(ys[:, valid], axis=0)
        std = np.nanstd(ys[:, valid], axis=0, ddof=1) if ys.shape[0] > 1 else np.zeros_like(mean)
    std = np.nan_to_num(std)
    ax.plot(x[valid], mean, label=label, color=color, marker="." if valid.sum() < 12 else None)
    ax.fill_between(x[valid], mean - std, mean + std, color=color, alpha=0.15)


HIST_LABELS = ("root", "(0, .2]", "(.2, .4]", "(.4, .6]", "(.6, .8]", "(.8, 1]")
"""Bins of the pivot-depth histogram (:func:`~deepgrpo_agent.pivots.depth_histogram`)."""


def _pivot_hist(ax: Any, cfg: ReportConfig, records: Sequence[Mapping[str, Any]], colors: dict[str, Any]) -> None:
    """Where branching strategies branched: root pivots apart, the others by normalized depth r."""
    branching = [s for s in cfg.strategies
                 if any(sum(r["pivot_ratio_hist"]) > 0 for r in records if r["strategy"] == s)]
    width = 0.8 / max(len(branching), 1)
    for k, strategy in enumerate(branching):
        hists = [_six_bins(r["pivot_ratio_hist"]) for r in records if r["strategy"] == strategy]
        hist = np.sum(hists, axis=0)
        share = hist / max(hist.sum(), 1.0)
        ax.bar(np.arange(6) + k * width - 0.4 + width / 2, share, width, label=strategy, color=colors[strategy])
    ax.set_xticks(range(6), HIST_LABELS)
    ax.set_xlabel("pivot / fork depth: root, or r (fraction of the response)")
    ax.set_title("pivot-depth histogram (share of pivots)")
    if branching:
        ax.legend(fontsize=8)


def _six_bins(hist: Sequence[float]) -> np.ndarray:
    """A record's histogram as the six bins of :data:`HIST_LABELS` (records written before the root bin
    existed hold five r bins)."""
    h = np.asarray(hist, dtype=np.float64)
    return h if h.size == 6 else np.concatenate([[0.0], h])
