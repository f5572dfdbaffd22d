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
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from deepgrpo_agent.algorithms import get_algorithm
from deepgrpo_agent.callbacks import Callback
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
        "deep-grpo", {"truncated_roots_fail": True, "sentence_split": "bare", "phi_min_per_class": 0},
        "DEEP-GRPO with the paper's choices where the library differs: truncated roots score 0, sentences split on the "
        "bare '.' token, P_phi fitted as soon as both classes occur (see docs/comparisons.md, 'Deviations')",
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
                                   "phi_min_per_class": 10, "sentence_split": "contains"}
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


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, allow_nan=True)
    os.replace(tmp, path)


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
        raise RuntimeError(f"No run of this comparison has finished in {cfg.output_dir}; run it without report_only.")
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


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def token_grid(cfg: CompareConfig) -> np.ndarray:
    """The marks where curves of different runs are compared: 0, budget/num_evals, ..., budget, in
    generated tokens (protocol "tokens") or optimizer steps (protocol "steps")."""
    end = float(cfg.token_budget if cfg.protocol == "tokens" else cfg.steps)
    return np.linspace(0.0, end, cfg.num_evals + 1)


def x_axis(cfg: CompareConfig) -> str:
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


def baselines_of(cfg: CompareConfig) -> list[str]:
    """The baselines the tables compare with: ``cfg.baselines`` that are in ``cfg.strategies``, else the first strategy."""
    return [b for b in cfg.baselines if b in cfg.strategies] or [cfg.strategies[0]]


def paired_rows(cfg: CompareConfig, records: Sequence[Mapping[str, Any]],
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


def plot_comparison(cfg: CompareConfig, records: Sequence[Mapping[str, Any]], out: Path) -> list[Path]:
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


def _plot_seeds(cfg: CompareConfig, records: Sequence[Mapping[str, Any]], path: Path, colors: dict[str, Any],
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


def _pivot_hist(ax: Any, cfg: CompareConfig, records: Sequence[Mapping[str, Any]], colors: dict[str, Any]) -> None:
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
