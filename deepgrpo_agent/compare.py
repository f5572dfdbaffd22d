"""Exploration strategies side by side: strategies x seeds at equal generated tokens or equal optimizer steps.

:func:`run_comparison` trains every (strategy, seed) pair of a :class:`CompareConfig` on one env under
one protocol (docs/methods.md §5): ``protocol="tokens"`` stops every run once it generated
``token_budget`` tokens (roots + branches), ``protocol="steps"`` gives every run ``steps`` optimizer steps
(the DEEP-GRPO paper's protocol; ``grpo-matched``, GRPO-N with DEEP-GRPO's rollouts per step, is its
compute-matched control). Runs are evaluated on the same held-out problems at the same marks, and
the cost of every run (steps, rollouts per step, generated and trained tokens, wall time) is
reported under either protocol. Then it writes:

- ``runs.csv``: one row per run (initial / final / best greedy accuracy, sampled accuracy, pass@k,
  entropy, response length, and the cost columns);
- ``results.csv`` and ``results.json``: mean and std over seeds per strategy (the JSON also holds
  every curve and every run);
- ``paired.csv`` and ``tables.md``: paired-by-seed differences against ``baselines`` with 95% t
  intervals and paired t-test p-values (:mod:`deepgrpo_agent.stats`), and the Markdown tables;
- ``comparison.png``, ``accuracy.png`` and ``seeds.png``: curves with ± std bands, entropy, response
  length, pivot-depth histogram, branch success rate, zero-variance-group fraction, and every seed's
  final accuracy with the paired intervals.

With ``lr_sweep`` each strategy first picks its learning rate on *validation* problems
(:func:`sweep_learning_rates`). Each run lives in ``<output_dir>/<strategy>/seed<k>`` with its own
checkpoints, so an interrupted comparison resumes where it stopped: finished runs are read back, a
cut run continues from its last checkpoint. A strategy is a name for an algorithm plus config values
(:data:`STRATEGIES`): GRPO-N is ``group_size = N`` and the paper's ablations are DEEP-GRPO with one
value changed, configuration and not code.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import hashlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from deepgrpo_agent.algorithms import get_algorithm
from deepgrpo_agent.callbacks import Callback
from deepgrpo_agent.compare_report import (
    _SUMMARY_KEYS,
    PAIRED_METRICS,
    _mean_std,
    _write_json_atomic,
    accuracy_at,
    baselines_of,
    format_tables,
    paired_rows,
    plot_comparison,
    print_table,
    token_grid,
    write_tables,
    x_axis,
)
from deepgrpo_agent.config import EngineName, check_types, field_types, from_dict, to_dict
from deepgrpo_agent.pivots import DEPTH_HIST_KEYS


@dataclass(frozen=True)
class Strategy:
    """An exploration strategy: an algorithm from :data:`~deepgrpo_agent.algorithms.ALGORITHMS` plus
    the config values that make it this strategy."""

    algo: str
    overrides: Mapping[str, Any]
    description: str
    matched: bool = False
    """GRPO-N at matched rollouts per step: ``group_size`` comes from :attr:`CompareConfig.matched_group_size`."""


STRATEGIES: dict[str, Strategy] = {
    "grpo": Strategy("grpo", {}, "GRPO: `group_size` roots per prompt, mean-centred advantages (§1)"),
    **{
        f"grpo-n{n}": Strategy("grpo", {"group_size": n}, f"GRPO-N scaling baseline with G = {n} roots (§1)")
        for n in (8, 16, 32, 64)
    },
    "deep-grpo": Strategy("deep-grpo", {}, "DEEP-GRPO p1b8, gamma = 2, utility pivots (§2)"),
    "deep-grpo-random-pivot": Strategy(
        "deep-grpo", {"pivot_sampling": "uniform"}, "DEEP-GRPO with uniform pivots (the paper's ablation)"
    ),
    "erpo": Strategy("erpo", {}, "ERPO: raised temperature on prompts that were all-correct (§3)"),
    "deep-erpo": Strategy("deep-erpo", {}, "DEEP-GRPO pivots + ERPO temperatures"),
    "treerl": Strategy("treerl", {"fork_selection": "entropy"}, "TreeRL EPTree (M, N, L, T) = (6, 2, 1, 2) (§4)"),
    "uniform-tree": Strategy("uniform-tree", {}, "Uniform random forks, TreeRL's tree shape: equal rollouts, not equal tokens (§4)"),
    "attnrl": Strategy("attnrl", {}, "AttnRL: branch at the earliest well-spaced steps in the top 20% of attention-based influence (FCI), adaptive sampling, TreeRL advantages (§4b)"),
    "grpo-matched": Strategy(
        "grpo", {}, "GRPO-N at DEEP-GRPO's rollouts per step: G = `matched_group_size` (the paper's compute-matched control, §5)",
        matched=True,
    ),
    "grpo-paper": Strategy(
        "grpo", {"drop_zero_advantage_roots": True, "truncated_roots_fail": True},
        "GRPO with the paper code's choices: zero-advantage rows out of the token-mean denominator, truncated roots score 0",
    ),
    # The paper's ablations (docs/methods.md §2); each changes one value of deep-grpo (p1b8, gamma 2, lambda 1).
    "deep-grpo-root-only": Strategy("deep-grpo", {"depth_bias_gamma": -20.0},
                                    "DEEP-GRPO ablation gamma = -20: pivots at the root only (more root rollouts)"),
    **{
        f"deep-grpo-gamma{g}": Strategy("deep-grpo", {"depth_bias_gamma": float(g)},
                                        f"DEEP-GRPO ablation gamma = {g} (deep-grpo is gamma = 2)")
        for g in (0, 1, 3)
    },
    **{
        f"deep-grpo-lambda{lam:g}": Strategy("deep-grpo", {"local_loss_weight": lam},
                                             f"DEEP-GRPO ablation lambda = {lam:g} (deep-grpo is lambda = 1)")
        for lam in (0.5, 2.0)
    },
    **{
        f"deep-grpo-p{p}b{b}": Strategy("deep-grpo", {"pivots_per_trajectory": p, "branches_per_pivot": b},
                                        f"DEEP-GRPO ablation p{p}b{b}: {p} pivot(s) x {b} branches (deep-grpo is p1b8)")
        for p, b in ((1, 4), (2, 4))
    },
    "deep-grpo-expand-all": Strategy("deep-grpo", {"expand_all": True},
                                     "DEEP-GRPO ablation expand-all: pivots in successful roots too"),
    "deep-grpo-paper": Strategy(
        "deep-grpo", {"truncated_roots_fail": True, "sentence_split": "bare", "phi_min_per_class": 0,
                      "phi_min_total": 10},
        "DEEP-GRPO with the paper's choices where the library differs: truncated roots score 0, sentences split on the "
        "bare '.' token, P_phi fitted once > 10 pivots with both classes are buffered (see docs/comparisons.md, 'Deviations')",
    ),
}
"""Named strategies ``deepgrpo compare --strategies`` accepts."""

STRATEGIES.update({
    f"deep-grpo-{suffix}": Strategy("deep-grpo", {"pivot_utility": name},
                                    f"DEEP-GRPO p1b8, pivots by the {desc} utility (deepgrpo_agent/pivot_utility.py)")
    for suffix, name, desc in (
        ("root-pivot", "root", "root-only"), ("surprisal", "surprisal", "least-likely-token segment"),
        ("entropy", "entropy", "max boundary entropy"),
        ("learned", "learned", "learned P(mixed | r, surprisal, entropy, index)"),
    )
})

TESTBED_MODEL = "arithmetic-testbed"
"""The shipped tiny policy the default comparison runs on (see :mod:`deepgrpo_agent.testbed`)."""

Protocol_ = Literal["tokens", "steps"]
"""Comparison protocols: equal generated tokens, or equal optimizer steps (docs/methods.md §5)."""


def _testbed_env_kwargs() -> dict[str, Any]:
    from deepgrpo_agent.testbed import TESTBED_ENV_KWARGS

    return dict(TESTBED_ENV_KWARGS)


def testbed_train() -> dict[str, Any]:
    """The shared trainer values of the testbed comparison (the :class:`CompareConfig` default).

    Besides the GRPO batch (8 prompts x 8 roots) and the learning rate measured on the testbed (1e-4;
    3e-4 collapses), training draws from a pool of 256 problems revisited in epochs (ERPO's per-prompt
    history needs revisits; Arithmetic-v0's 2**31 problems would never repeat), and two strategy fields are adapted to Arithmetic-v0's format, which writes one step
    per line and ends with an ``A: <n>`` line: DEEP-GRPO segments at newlines (there is no '.' to end
    a sentence), and TreeRL's masking uses ``A:`` as its stop word and skips only the last 2 tokens
    (its defaults, "answer"/"conclusion" and 10 tokens, are sized for natural-language solutions;
    with 25-token responses they would mask half of every response).
    """
    from deepgrpo_agent.testbed import TESTBED_MAX_NEW_TOKENS

    return {
        "prompts_per_step": 8, "group_size": 8, "learning_rate": 1e-4, "micro_batch_size": 64, "train_problems": 256,
        "max_new_tokens": TESTBED_MAX_NEW_TOKENS, "segment": "line", "stop_words": ["A:"], "skip_last_tokens": 2,
    }


@dataclass
class CompareConfig:
    """A comparison: strategies x seeds on one env at an equal generated-token budget.

    The defaults are the README's testbed comparison (the shipped tiny policy on Arithmetic-v0).
    """

    strategies: tuple[str, ...] = ("grpo-n8", "grpo-matched", "deep-grpo", "erpo", "treerl", "uniform-tree")
    """Strategy names (see `deepgrpo compare --list`); GRPO-N is grpo-n8 / grpo-n16 / grpo-n32 / grpo-n64, and grpo-matched the GRPO-N whose rollouts per step match DEEP-GRPO's."""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """Seeds; every strategy runs once per seed (problem order, sampling and strategy randomness)."""
    protocol: Protocol_ = "tokens"
    """"tokens": every run spends the same `token_budget` of generated tokens (favours small batches: more steps per token); "steps": every run takes the same `steps` optimizer steps (the DEEP-GRPO paper's protocol, with grpo-matched as the compute-matched control). The cost of every run (tokens, rollouts, trained tokens, wall time) is reported either way."""
    token_budget: int = 300_000
    """protocol="tokens": generated tokens (roots + branches) each run may spend; a run stops after the step that reaches it."""
    steps: int = 100
    """protocol="steps": optimizer steps of every run."""
    num_evals: int = 6
    """Held-out evaluations along the run (one each budget/num_evals tokens or steps/num_evals steps), plus one before training."""
    matched_group_size: int = 32
    """Group size G of the strategy grpo-matched: DEEP-GRPO's rollouts per step divided by `prompts_per_step` (the default 32 is the testbed's: DEEP-GRPO p1b8 draws 64 roots + 8 branches per failed root, about 250-330 rollouts per step; the tables print every run's rollouts per step to check the match)."""
    baselines: tuple[str, ...] = ("grpo-n8", "grpo-matched")
    """Strategies every other strategy is compared with, paired by seed (mean difference, 95% CI, paired t-test); names not in `strategies` are skipped, and with none left the first strategy is the baseline."""
    lr_sweep: tuple[float, ...] = ()
    """Learning rates to sweep per strategy before the comparison (empty = no sweep, every strategy uses `train`'s rate): each strategy trains once per rate and `lr_sweep_seeds` seed, evaluated on the *validation* problems (eval_split="validation", disjoint from the test problems and from training), and its comparison runs use the rate with the best mean final validation greedy accuracy."""
    lr_sweep_seeds: tuple[int, ...] = (100,)
    """Seeds of the learning-rate sweep runs (distinct from `seeds` by default, so the test runs are not the ones the rate was chosen on)."""
    env_id: str = "Arithmetic-v0"
    """Registered environment id all strategies train on."""
    env_kwargs: dict[str, Any] = field(default_factory=_testbed_env_kwargs)
    """Environment arguments; the default is the level the testbed policy was trained for."""
    model: str = TESTBED_MODEL
    """Initial policy of every run: "arithmetic-testbed", "default", "random-tiny" or a checkpoint directory."""
    engine: EngineName = "hf"
    """Generation backend of every run: "hf" or "vllm" (docs/vllm.md); a `train` or strategy value wins over it."""
    train: dict[str, Any] = field(default_factory=testbed_train)
    """Trainer config values shared by the strategies (JSON on the command line, replacing the default dict as a whole), e.g. {"learning_rate": 1e-4}; a strategy-specific field (e.g. DEEP-GRPO's `segment`) goes to the strategies whose config has it (the default: `testbed_train()`)."""
    strategy_overrides: dict[str, Any] = field(default_factory=dict)
    """Per-strategy config values, e.g. {"deep-grpo": {"branches_per_pivot": 4}}; they win over `train`."""
    eval_problems: int = 512
    """Held-out problems per evaluation (the same problems for every run)."""
    pass_k: int = 4
    """Also sample k answers per held-out problem at each evaluation: sampled accuracy (at the training temperature) and pass@k; 0 = greedy accuracy only."""
    save_every: int = 10
    """Checkpoint every this many steps so that a cut comparison resumes close to where it stopped."""
    output_dir: str = "runs/compare"
    """Where runs, tables and plots go; rerunning with the same config resumes and reuses finished runs."""
    plots: bool = True
    """Write PNG plots (needs matplotlib)."""
    report_only: bool = False
    """Start no run: tabulate (and plot) only the runs that already finished, listing the missing ones; strategies without a finished run are left out, and paired statistics use the seeds both sides finished."""

    def __post_init__(self) -> None:
        check_types(self)
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise ValueError(
                f"Unknown strategies {unknown}; expected names from {sorted(STRATEGIES)} "
                "(`deepgrpo compare --list` describes them)."
            )
        if not self.strategies or len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"Expected one or more distinct strategies, got {list(self.strategies)}.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"Expected one or more distinct seeds, got {list(self.seeds)}.")
        for name, value, low in (("token_budget", self.token_budget, 1), ("steps", self.steps, 1),
                                 ("matched_group_size", self.matched_group_size, 2), ("num_evals", self.num_evals, 1),
                                 ("eval_problems", self.eval_problems, 1), ("pass_k", self.pass_k, 0),
                                 ("save_every", self.save_every, 0)):
            if value < low:
                raise ValueError(f"Expected `{name}` >= {low}, got {value}.")
        if self.protocol not in ("tokens", "steps"):
            raise ValueError(f"Expected `protocol` 'tokens' or 'steps', got {self.protocol!r}.")
        if self.protocol == "steps" and self.num_evals > self.steps:
            raise ValueError(f"Expected `num_evals` <= `steps` ({self.steps}) with protocol='steps', got {self.num_evals}.")
        unknown_base = [b for b in self.baselines if b not in STRATEGIES]
        if unknown_base:
            raise ValueError(f"Unknown `baselines` {unknown_base}; expected strategy names from {sorted(STRATEGIES)}.")
        bad_lr = [lr for lr in self.lr_sweep if not lr > 0]
        if bad_lr or len(set(self.lr_sweep)) != len(self.lr_sweep):
            raise ValueError(f"Expected `lr_sweep` to be distinct learning rates > 0, got {list(self.lr_sweep)}.")
        if self.lr_sweep and (not self.lr_sweep_seeds or len(set(self.lr_sweep_seeds)) != len(self.lr_sweep_seeds)):
            raise ValueError(f"Expected one or more distinct `lr_sweep_seeds`, got {list(self.lr_sweep_seeds)}.")
        stray = [k for k in self.strategy_overrides if k not in self.strategies]
        if stray:
            raise ValueError(
                f"`strategy_overrides` names strategies {stray} that are not in `strategies` {list(self.strategies)}; "
                "add them to `strategies` or drop their overrides."
            )
        bad = [k for k, v in self.strategy_overrides.items() if not isinstance(v, dict)]
        if bad:
            raise ValueError(f"Expected `strategy_overrides` to map strategy names to dicts of config values, "
                             f"got non-dict values for {bad}.")
        known = set().union(*(field_types(get_algorithm(spec.algo)[0]) for spec in STRATEGIES.values()))
        orphans = [k for k in self.train if k not in known]
        if orphans:
            raise ValueError(
                f"`train` sets {orphans}, a field of no strategy's config; expected trainer config fields "
                "(`deepgrpo train --help` lists GRPO's, each algorithm's config adds its own)."
            )


# -- one run ----------------------------------------------------------------------------------------
def run_config(cfg: CompareConfig, strategy: str, seed: int, *, learning_rate: float | None = None,
               sweep: bool = False) -> Any:
    """The validated trainer config of one (strategy, seed) run: same env, model, budget and evaluation
    for every strategy; strategy values on top of the shared ``train`` values.

    ``protocol="tokens"`` stops every run at ``token_budget`` generated tokens and evaluates at token
    marks; ``protocol="steps"`` runs ``steps`` optimizer steps and evaluates at step marks. A
    ``learning_rate`` (from the sweep) wins over every other value; ``sweep`` runs evaluate on the
    validation problems and live under ``<output_dir>/lr_sweep``.
    """
    spec = STRATEGIES[strategy]
    config_cls, _ = get_algorithm(spec.algo)
    fields = field_types(config_cls)
    shared = {k: v for k, v in cfg.train.items() if k in fields}  # e.g. `segment` only for DEEP-GRPO configs
    values: dict[str, Any] = {"total_steps": 1_000_000, "engine": cfg.engine, **shared, **spec.overrides,
                              **cfg.strategy_overrides.get(strategy, {})}
    if spec.matched:
        values["group_size"] = cfg.matched_group_size
    if learning_rate is not None:
        values["learning_rate"] = learning_rate
    budget: dict[str, int | None]
    if cfg.protocol == "tokens":
        budget = dict(max_generated_tokens=cfg.token_budget, eval_every=0,
                      eval_every_tokens=max(cfg.token_budget // cfg.num_evals, 1))
    else:
        budget = dict(total_steps=cfg.steps, max_generated_tokens=None, eval_every=max(cfg.steps // cfg.num_evals, 1),
                      eval_every_tokens=0)
    out = sweep_dir(cfg, strategy, seed, learning_rate) if sweep else run_dir(cfg, strategy, seed)
    values.update(
        env_id=cfg.env_id, env_kwargs=dict(cfg.env_kwargs), model=cfg.model, seed=seed, **budget,
        eval_problems=cfg.eval_problems, eval_split="validation" if sweep else "test",
        pass_k=cfg.pass_k, save_every=cfg.save_every, output_dir=str(out),
        resume=True, progress=False, tensorboard=False, wandb=False,
    )
    return from_dict(config_cls, values, where=f" (strategy {strategy!r})")


def run_dir(cfg: CompareConfig, strategy: str, seed: int) -> Path:
    return Path(cfg.output_dir) / strategy / f"seed{seed}"


def sweep_dir(cfg: CompareConfig, strategy: str, seed: int, learning_rate: float | None) -> Path:
    return Path(cfg.output_dir) / "lr_sweep" / strategy / f"lr{learning_rate:g}" / f"seed{seed}"


_PLACEMENT = {"resume": None, "ray_address": None, "rollout_worker_gpus": 0.0, "rollout_workers": 0}
"""Fields left out of a run's fingerprint (always ``resume`` and where the work runs; ``rollout_workers``
when 0), so that run directories written before these fields existed are still recognized."""
_LATER_DEFAULTS: dict[str, Any] = {"drop_zero_advantage_roots": False, "truncated_roots_fail": False, "eval_split": "test",
                                   "phi_min_per_class": 10, "sentence_split": "contains",
                                   "phi_min_total": 0}
"""Fields added after runs were first fingerprinted: left out of the fingerprint at these values (the
behaviour before they existed), so that older run directories are still recognized."""


def _fingerprint(config: Any, *, engine_key: bool = False) -> str:
    """The run's identity; ``engine_key`` keeps ``engine = "hf"`` in it, as runs written while `engine`
    existed without the vLLM fields had it."""
    values = {k: v for k, v in to_dict(config).items()
              if not (k in _PLACEMENT and (k in ("resume", "ray_address") or v == _PLACEMENT[k]))
              and not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k])}
    if values.get("engine") == "hf":  # runs from before the engine fields existed keep their fingerprint
        for key in ("engine", "vllm_kv_cache_gb", "vllm_gpu_memory_utilization")[int(engine_key):]:
            values.pop(key, None)
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _PrintEvals(Callback):
    """One line per evaluation of a comparison run."""

    def __init__(self, label: str, budget: int) -> None:
        self.label, self.budget = label, budget

    def on_evaluate(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        budget = f"/{self.budget:,}" if self.budget else ""
        print(f"  [{self.label}] step {step:4d}  tokens {int(trainer.budget.generated_tokens):>9,}{budget}"
              f"  held-out accuracy {metrics.get('eval/accuracy', float('nan')):.3f}", flush=True)


def run_one(cfg: CompareConfig, strategy: str, seed: int) -> dict[str, Any]:
    """Trains (or resumes, or reads back) one run and returns its record (see :func:`_record`).

    Raises:
        ValueError: If the run directory holds a run of a different configuration.
    """
    return _train(cfg, run_config(cfg, strategy, seed), strategy, seed)


def _train(cfg: CompareConfig, config: Any, strategy: str, seed: int) -> dict[str, Any]:
    """Trains (or resumes, or reads back) the run of trainer config ``config`` and returns its record."""
    stored = stored_record(config)
    if stored is not None:
        return stored
    out = Path(config.output_dir)
    _write_json_atomic(out / "run_config.json", {"fingerprint": _fingerprint(config), "config": to_dict(config)})
    _, trainer_cls = get_algorithm(STRATEGIES[strategy].algo)
    _quiet_transformers()
    trainer = trainer_cls(config, callbacks=[_PrintEvals(f"{strategy} seed {seed}", cfg.token_budget if cfg.protocol == "tokens" else 0)])
    trainer.train()
    record = _record(strategy, seed, trainer)
    _write_json_atomic(out / "result.json", record)
    del trainer
    gc.collect()
    return record


def stored_record(config: Any) -> dict[str, Any] | None:
    """The record of the finished run of trainer config ``config`` in its ``output_dir``, or None when
    that run has not finished (or not started).

    Raises:
        ValueError: If the directory holds a run of a different configuration.
    """
    out = Path(config.output_dir)
    marker, result = out / "run_config.json", out / "result.json"
    if not marker.is_file():
        return None
    stored = json.loads(marker.read_text())
    key = _fingerprint(config)
    where = stored.get("config", {}).get("output_dir")
    # A run directory linked or copied from another comparison (e.g. the ablations reuse the steps
    # comparison's deep-grpo runs) is the same run if it is the same config at its first location.
    at = [config] + ([dataclasses.replace(config, output_dir=where)]
                     if isinstance(where, str) and where != config.output_dir else [])
    known = {_fingerprint(c, engine_key=e) for c in at for e in (False, True)}
    if stored.get("fingerprint") in known:
        key = stored["fingerprint"]
    if stored.get("fingerprint") != key:
        raise ValueError(
            f"{out} holds a run with a different configuration (fingerprint {stored.get('fingerprint')} != "
            f"{key}); pick another `output_dir` or delete {out} to start that run again."
        )
    return dict(json.loads(result.read_text())) if result.is_file() else None


def _keep_record(config: Any, record: Mapping[str, Any]) -> None:
    """Writes a run's marker and result where they are missing (a run that ran on another node of a
    cluster without a shared file system), so that the next comparison reads it back."""
    out = Path(config.output_dir)
    if not (out / "run_config.json").is_file():
        _write_json_atomic(out / "run_config.json", {"fingerprint": _fingerprint(config), "config": to_dict(config)})
    if not (out / "result.json").is_file():
        _write_json_atomic(out / "result.json", dict(record))


def _quiet_transformers() -> None:
    """No per-run "Writing model shards" bars between the comparison's own progress lines."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    except ImportError:  # pragma: no cover - transformers is a core dependency
        pass


def _train_lines(path: Path) -> list[dict[str, float]]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("kind") == "train":
                rows.append(row)
    return rows


def _record(strategy: str, seed: int, trainer: Any) -> dict[str, Any]:
    """What a run contributes to the tables and plots: every evaluation, per-step curves, the cost."""
    evals = [e for e in trainer.eval_history if "eval/accuracy" in e]
    steps = _train_lines(Path(trainer.config.output_dir) / "metrics.jsonl")
    curve_keys = ("rollout/entropy", "rollout/response_length", "rollout/zero_variance_fraction",
                  "pivot/branch_success_rate", "rollout/accuracy")
    hist = np.zeros(len(DEPTH_HIST_KEYS))
    for row in steps:
        hist += np.array([row.get(f"pivot/{k}", 0.0) for k in DEPTH_HIST_KEYS])
    pass_key = next((k for e in evals for k in e if k.startswith("eval/pass@")), "eval/pass@k")
    curve = {name: [e.get(key, float("nan")) for e in evals] for name, key in _EVAL_KEYS.items()}
    curve["pass_at_k"] = [e.get(pass_key, float("nan")) for e in evals]
    record: dict[str, Any] = {"strategy": strategy, "algo": STRATEGIES[strategy].algo, "seed": seed,
                              "learning_rate": float(trainer.config.learning_rate),
                              "group_size": int(trainer.config.group_size)}
    for name in _EVAL_METRICS:
        y = curve[name]
        record[f"initial_{name}"] = y[0] if y else float("nan")
        record[f"final_{name}"] = y[-1] if y else float("nan")
        later = [v for v in y[1:] if np.isfinite(v)]
        record[f"best_{name}"] = max(later) if later else float("nan")
    entropy = [r.get("rollout/entropy", float("nan")) for r in steps]
    tail = entropy[-max(1, len(entropy) // 10):]  # the last tenth of training: a less noisy "final" value
    record["final_entropy"] = float(np.nanmean(tail)) if tail and np.isfinite(tail).any() else float("nan")
    record["initial_entropy"] = float(entropy[0]) if entropy else float("nan")
    n_steps = int(trainer.step)
    budget = trainer.budget
    record.update({
        "generated_tokens": int(budget.generated_tokens),
        "branch_rollouts": int(budget.branch_rollouts),
        "root_rollouts": int(budget.root_rollouts),
        "rollouts_per_step": (budget.root_rollouts + budget.branch_rollouts) / max(n_steps, 1),
        "trained_tokens": int(budget.trained_tokens),
        "processed_tokens": int(sum(r.get("train/processed_tokens", 0.0) for r in steps)),
        "steps": n_steps,
        "train_wall_s": float(sum(r.get("perf/step_s", 0.0) for r in steps)),
        "eval_curve": {"tokens": [e["budget/generated_tokens"] for e in evals],
                       "steps": [e.get("step", float("nan")) for e in evals], **curve},
        "step_curves": {
            "tokens": [r.get("budget/generated_tokens", float("nan")) for r in steps],
            "steps": [r.get("step", float(i + 1)) for i, r in enumerate(steps)],
            **{k: [r.get(k, float("nan")) for r in steps] for k in curve_keys},
        },
        "pivot_ratio_hist": hist.tolist(),
    })
    return record


_EVAL_KEYS = {"accuracy": "eval/accuracy", "sample_accuracy": "eval/sample_accuracy",
              "response_length": "eval/response_length", "truncated_fraction": "eval/truncated_fraction"}
"""Record name -> eval metric of every evaluation kept in a run's ``eval_curve`` (plus ``pass_at_k``)."""
_EVAL_METRICS = ("accuracy", "sample_accuracy", "pass_at_k", "response_length")
"""Eval metrics with initial / final / best values in a run's record (``accuracy`` is greedy)."""


# -- the comparison ---------------------------------------------------------------------------------
class Runner(Protocol):
    """Where the runs of a comparison execute: :class:`LocalRunner` (this process, one after the other)
    or :class:`~deepgrpo_agent.ray_runner.RayRunner` (one Ray task each). A runner only executes
    :func:`run_one`; reading back finished runs, progress, tables and plots are
    :func:`run_comparison`'s, the same for every runner."""

    def describe(self) -> str:
        """A few words for the first progress line."""
        ...

    def run(self, cfg: CompareConfig, runs: Sequence[tuple[int, str, int]]) -> Iterator[tuple[int, dict[str, Any], float]]:
        """Executes ``runs`` (``(index, strategy, seed)``) and yields ``(index, record, seconds)`` as
        each finishes, in any order."""
        ...


class LocalRunner:
    """Runs the comparison in this process, one run after the other (the default)."""

    def describe(self) -> str:
        return "this process, one run at a time"

    def run(self, cfg: CompareConfig, runs: Sequence[tuple[int, str, int]]) -> Iterator[tuple[int, dict[str, Any], float]]:
        for index, strategy, seed in runs:
            _progress_line(f"start {strategy} (seed {seed}): {STRATEGIES[strategy].description}")
            t0 = time.perf_counter()
            record = run_one(cfg, strategy, seed)
            yield index, record, time.perf_counter() - t0


def plan(cfg: CompareConfig) -> list[tuple[str, int]]:
    """Every (strategy, seed) of the comparison, in table order (seed-major, as the runs were always run)."""
    return [(s, seed) for seed in cfg.seeds for s in cfg.strategies]


def run_comparison(cfg: CompareConfig, runner: Runner | None = None) -> dict[str, Any]:
    """Runs (or resumes) every strategy x seed, then writes the tables and plots; returns the summary.

    Finished runs are read back from their directories without running anything; the others go to
    ``runner`` (default :class:`LocalRunner`; :class:`~deepgrpo_agent.ray_runner.RayRunner` fans them
    out over a Ray cluster). Records are tabulated in :func:`plan` order whatever order the runner
    finishes them in, so the tables do not depend on the runner.
    """
    runner = LocalRunner() if runner is None else runner
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(out / "compare_config.json", to_dict(cfg))
    cfg = with_swept_rates(cfg, sweep_learning_rates(cfg))
    runs = plan(cfg)
    records: list[dict[str, Any] | None] = [None] * len(runs)
    todo = []
    for index, (strategy, seed) in enumerate(runs):
        records[index] = stored_record(run_config(cfg, strategy, seed))
        if records[index] is None:
            todo.append((index, strategy, seed))
    reused = len(runs) - len(todo)
    if cfg.report_only:
        return _report_finished(cfg, runs, records, todo)
    _progress_line(f"{len(runs)} runs ({len(cfg.strategies)} strategies x {len(cfg.seeds)} seeds), {reused} finished "
                   f"earlier and read back; running {len(todo)} on {runner.describe()}")
    bar, finished = _bar(len(runs), reused), reused
    try:
        for index, record, seconds in runner.run(cfg, todo):
            strategy, seed = runs[index]
            _keep_record(run_config(cfg, strategy, seed), record)
            records[index] = record
            finished += 1
            bar.update(1)
            _progress_line(f"[{finished}/{len(runs)}] {strategy} seed {seed} done in {seconds:.0f} s: final accuracy "
                           f"{record['final_accuracy']:.3f}, {record['generated_tokens']:,} tokens in "
                           f"{record['steps']} steps", bar)
    finally:
        bar.close()
    missing = [runs[i] for i, r in enumerate(records) if r is None]
    if missing:
        raise RuntimeError(f"The runner finished without results for {missing}; rerun the same command to resume them.")
    done = [r for r in records if r is not None]
    summary = summarize(cfg, done)
    write_tables(out, done, summary)
    if cfg.plots:
        plot_comparison(cfg, done, out)
    print_table(summary)
    return summary


def _report_finished(cfg: CompareConfig, runs: Sequence[tuple[str, int]], records: Sequence[dict[str, Any] | None],
                     todo: Sequence[tuple[int, str, int]]) -> dict[str, Any]:
    """``report_only``: the tables and plots of the finished runs alone."""
    if todo:
        _progress_line(f"report only: {len(todo)} of {len(runs)} runs have not finished and are left out: "
                       + ", ".join(f"{s} seed {k}" for _, s, k in todo))
    done = [r for r in records if r is not None]
    if not done:
        raise FileNotFoundError(f"Expected finished runs of this comparison in {cfg.output_dir}, found none; run it without report_only (or point output_dir at a finished comparison).")
    kept = tuple(s for s in cfg.strategies if any(r["strategy"] == s for r in done))
    seeds = tuple(k for k in cfg.seeds if any(r["seed"] == k for r in done))
    sub = dataclasses.replace(cfg, strategies=kept, seeds=seeds,
                              strategy_overrides={k: v for k, v in cfg.strategy_overrides.items() if k in kept})
    summary = summarize(sub, done)
    write_tables(Path(cfg.output_dir), done, summary)
    if cfg.plots:
        plot_comparison(sub, done, Path(cfg.output_dir))
    print_table(summary)
    return summary


def sweep_learning_rates(cfg: CompareConfig) -> dict[str, float]:
    """The learning rate of each strategy chosen by the ``lr_sweep`` (empty dict without a sweep).

    Every strategy trains once per rate in ``cfg.lr_sweep`` and seed in ``cfg.lr_sweep_seeds`` under
    the comparison's protocol and budget, evaluated on the *validation* problems (the
    ``eval_problems`` just before the test slice, kept out of training too; ``eval_split="validation"``),
    in this process; the rate with the best mean final validation greedy accuracy wins (ties: the
    smaller rate). Writes ``lr_sweep.csv`` (every sweep run) and ``lr_sweep.json`` (the choice). Sweep
    runs live in ``<output_dir>/lr_sweep`` and are read back like any other run when rerun.
    """
    if not cfg.lr_sweep:
        return {}
    rows: list[dict[str, Any]] = []
    chosen: dict[str, float] = {}
    for strategy in cfg.strategies:
        scores = []
        for lr in sorted(cfg.lr_sweep):
            accs = []
            for seed in cfg.lr_sweep_seeds:
                config = run_config(cfg, strategy, seed, learning_rate=lr, sweep=True)
                if stored_record(config) is None:
                    _progress_line(f"lr sweep: {strategy} lr {lr:g} seed {seed} (validation problems)")
                record = _train(cfg, config, strategy, seed)
                accs.append(float(record["final_accuracy"]))
                rows.append({"strategy": strategy, "learning_rate": lr, "seed": seed,
                             "validation_final_accuracy": record["final_accuracy"],
                             "validation_final_sample_accuracy": record["final_sample_accuracy"]})
            scores.append((float(np.mean(accs)), lr))
        best = max(score for score, _ in scores)
        chosen[strategy] = min(lr for score, lr in scores if score == best)
        _progress_line(f"lr sweep: {strategy} uses lr {chosen[strategy]:g} (mean final validation greedy accuracy "
                       + ", ".join(f"{lr:g}: {score:.3f}" for score, lr in scores) + ")")
    out = Path(cfg.output_dir)
    with (out / "lr_sweep.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(rows[0]))
        for row in rows:
            w.writerow(list(row.values()))
    _write_json_atomic(out / "lr_sweep.json", {"chosen": chosen, "runs": rows})
    return chosen


def with_swept_rates(cfg: CompareConfig, rates: Mapping[str, float]) -> CompareConfig:
    """``cfg`` with each strategy's swept learning rate added to its ``strategy_overrides``."""
    if not rates:
        return cfg
    overrides = {s: dict(cfg.strategy_overrides.get(s, {})) for s in cfg.strategies}
    for s, lr in rates.items():
        overrides[s]["learning_rate"] = lr
    return dataclasses.replace(cfg, strategy_overrides={s: v for s, v in overrides.items() if v})


def _bar(total: int, initial: int) -> Any:
    """The overall progress bar (runs finished of all runs), on stderr when it is a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="runs", unit="run", disable=None, leave=False)


def _progress_line(text: str, bar: Any = None) -> None:
    if bar is not None and not bar.disable:
        bar.write(text)
        return
    print(text, flush=True)


def summarize(cfg: CompareConfig, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of each strategy's numbers, its mean curves, and the paired differences
    against the baselines (:func:`paired_rows`)."""
    grid, x = token_grid(cfg), x_axis(cfg)
    rows = []
    for strategy in cfg.strategies:
        runs = [r for r in records if r["strategy"] == strategy]
        row: dict[str, Any] = {"strategy": strategy, "algo": STRATEGIES[strategy].algo, "seeds": len(runs)}
        for key in _SUMMARY_KEYS:
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([r.get(key, float("nan")) for r in runs])
        for key in ("accuracy", "sample_accuracy", "pass_at_k"):
            curves = np.stack([accuracy_at(r, grid, key, x) for r in runs])
            row[f"{key}_curve_mean"] = curves.mean(axis=0).tolist()
            row[f"{key}_curve_std"] = (curves.std(axis=0, ddof=1) if len(runs) > 1 else 0 * curves[0]).tolist()
        rows.append(row)
    return {"protocol": cfg.protocol, "token_budget": cfg.token_budget, "steps": cfg.steps, "x_axis": x,
            "token_grid": grid.tolist(), "strategies": rows, "baselines": baselines_of(cfg),
            "paired": paired_rows(cfg, records), "config": to_dict(cfg)}


def describe_strategies() -> str:
    """One line per named strategy (``deepgrpo compare --list``)."""
    return "\n".join(f"{name:24s} --algo {spec.algo:10s} {spec.description}"
                     + (f"; config {dict(spec.overrides)}" if spec.overrides else "")
                     for name, spec in STRATEGIES.items())


__all__ = [
    "STRATEGIES",
    "CompareConfig",
    "LocalRunner",
    "Runner",
    "Strategy",
    "accuracy_at",
    "describe_strategies",
    "plan",
    "plot_comparison",
    "run_comparison",
    "run_config",
    "run_one",
    "stored_record",
    "summarize",
    "sweep_learning_rates",
    "with_swept_rates",
    "token_grid",
    "write_tables",
    "x_axis",
    "paired_rows",
    "baselines_of",
    "format_tables",
    "PAIRED_METRICS",
]
