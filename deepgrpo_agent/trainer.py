"""GRPOTrainer: ``collect()`` -> ``compute_advantages(rollouts)`` -> ``update(samples)``, a template method.

Deviations from the papers (docs/methods.md §1):
- The loss is computed on per-token log-probs of the temperature-scaled policy (logits / T), the
  distribution the rollouts were sampled from, as TRL does.
- With ``ppo_epochs == 1`` the "old" policy is the current one detached (ratio exactly 1, as in the
  DEEP-GRPO runs); with more epochs the old log-probs come from a no-grad forward pass before the
  first update, not from the KV-cache rollout (they agree to ~1e-5 in fp32; see the tests).
- Unscorable rewards (verifier returned None or timed out) get advantage 0 and are excluded from
  their group's mean, as TRL does, and are counted in ``rollout/unscorable_fraction``.

Each stage is a method a strategy overrides: DEEP-GRPO's :meth:`collect` adds branches from pivots
and its :meth:`compute_advantages` a second stream (weighed by :meth:`stream_weights`); ERPO
overrides :meth:`root_temperatures` (per-prompt sampling temperatures, which the loss then scores
each sample at), :meth:`observe_roots` (its history tracker) and :meth:`root_advantages` (the
pseudo-advantage); the trees override :meth:`roots_per_prompt`, :meth:`collect` and
:meth:`compute_advantages`. The envs come from an :class:`~deepgrpo_agent.env_pool.EnvPool` (the
user may pass an env factory) and the engine from :func:`~deepgrpo_agent.engine.make_engine` (or is
passed in); the update is :func:`~deepgrpo_agent.update.policy_update`, a function of explicit
arguments.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import envs_registry
from deepgrpo_agent import checkpoint as ckpt
from deepgrpo_agent.advantages import group_advantages, group_stats, zero_variance_groups
from deepgrpo_agent.callbacks import (
    Callback,
    CheckpointCallback,
    EvalCallback,
    JSONLLogger,
    ProgressBar,
    TensorBoardLogger,
    WandbLogger,
)
from deepgrpo_agent.config import GRPOConfig, to_dict
from deepgrpo_agent.engine import Engine, engine_max_len, make_engine
from deepgrpo_agent.engine.protocol import SamplingParams
from deepgrpo_agent.env_pool import EnvFactory, EnvPool
from deepgrpo_agent.evaluation import evaluate_on_pool
from deepgrpo_agent.policy import (
    RANDOM_TINY,
    load_dtype,
    load_policy,
    model_precision,
    random_tiny_model,
    resolve_device,
)
from deepgrpo_agent.rollout import RolloutBatch, branch_rollouts, collect_rollouts
from deepgrpo_agent.samples import GLOBAL_STREAM, Rollouts, TrainSamples
from deepgrpo_agent.testbed import DEEP_TESTBED, TESTBED, check_vocab
from deepgrpo_agent.update import UpdateSettings, policy_update
from deepgrpo_env.state import EnvState

_MAX_EPOCH_SIZE = 10_000_000  # above this many training problems, sample i.i.d. instead of by epochs
ZERO_ADVANTAGE = 1e-8
"""Samples with |A| below this count as zero-advantage (``drop_zero_advantage_roots``; the paper code's threshold)."""


def fail_truncated(batch: RolloutBatch) -> RolloutBatch:
    """``batch`` with every truncated row scored 0 and marked incorrect (``truncated_roots_fail``: the
    DEEP-GRPO paper scores every sample that hit the length limit 0, whatever its text says)."""
    cut = np.asarray(batch.truncated, dtype=bool)
    if not cut.any():
        return batch
    correct = batch.correct.copy()
    correct[cut] = False
    return dataclasses.replace(batch, rewards=np.where(cut, 0.0, batch.rewards), correct=correct)


@dataclass
class Budget:
    """Cumulative generation budget (docs/methods.md §5)."""

    root_rollouts: int = 0
    branch_rollouts: int = 0
    generated_tokens: int = 0
    prefilled_tokens: int = 0
    trained_tokens: int = 0

    def add(self, **counts: int) -> None:
        for k, v in counts.items():
            setattr(self, k, getattr(self, k) + int(v))

    def metrics(self) -> dict[str, float]:
        return {f"budget/{k}": float(v) for k, v in dataclasses.asdict(self).items()}


def _adamw(model: torch.nn.Module, config: GRPOConfig) -> torch.optim.Optimizer:
    """AdamW, fused where torch supports it (faster optimizer steps on the CPU; docs/performance.md)."""
    kwargs: dict[str, Any] = dict(lr=config.learning_rate, weight_decay=config.weight_decay,
                                  betas=config.adam_betas)
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # device or dtype without a fused kernel
        return torch.optim.AdamW(params, **kwargs)


class GRPOTrainer:
    """Trains a causal LM on a deepgrpo env with GRPO (docs/methods.md §1).

    Args:
        config: The run's configuration.
        model: A ready ``torch.nn.Module`` causal LM to train instead of loading ``config.model``.
        tokenizer: The tokenizer for ``model``, for envs that take one (MathReasoning-*); envs with
            their own codec (Arithmetic-v0) ignore it.
        callbacks: Extra callbacks, run after the built-in ones.
        make_env: ``make_env(num_envs) -> vector env`` building the training envs (root and branch)
            instead of the registry, e.g. with a custom reward wrapper; also the eval env unless
            ``config.eval_env_id`` or ``make_eval_env`` says otherwise (see
            :class:`~deepgrpo_agent.env_pool.EnvPool`).
        make_eval_env: ``make_eval_env(num_envs) -> vector env`` for evaluation.
        engine: The generation engine; None = :func:`~deepgrpo_agent.engine.make_engine` of
            ``config.engine`` over the model.
    """

    algo = "grpo"

    def __init__(
        self,
        config: GRPOConfig,
        *,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        callbacks: Sequence[Callback] = (),
        make_env: EnvFactory | None = None,
        make_eval_env: EnvFactory | None = None,
        engine: Engine | None = None,
    ) -> None:
        envs_registry.check_id(config.env_id)
        self.config = config
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        if model is None and config.model != RANDOM_TINY:
            model, tokenizer = load_policy(
                config.model, device=self.device, dtype=load_dtype(config.dtype, self.device)
            )
        self.tokenizer = tokenizer
        self.output_dir = Path(config.output_dir)
        self.step = 0
        self.budget = Budget()
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self.envs = EnvPool(config, roots=config.prompts_per_step * self.roots_per_prompt(), tokenizer=tokenizer,
                            make_env=make_env, make_eval_env=make_eval_env)
        self._check_policy_vocab()
        self._order: np.ndarray = np.zeros(0, dtype=np.int64)
        if model is None:  # "random-tiny": sized to the env, so made after it
            model = random_tiny_model(self.envs.vocab_size, config.seed)
        self.model = model.to(self.device)
        # The one vocabulary (scoring.restrict_vocab): the engine samples from it, the loss and the
        # reference model score over it, whatever the size of the model's (possibly padded) head.
        self.vocab_size = self.envs.vocab_size
        # Mixed precision (docs/precision.md): fp32 master weights, bf16 autocast and bf16 rollouts
        # where the hardware multiplies bf16 natively.
        self.precision = model_precision(self.model, config.dtype, self.device)
        self.engine = engine if engine is not None else make_engine(
            config, self.model, vocab_size=self.vocab_size, dtype=self.precision.compute_dtype,
            max_model_len=engine_max_len(config, self.envs.max_prompt_tokens, self.model))
        self.ref_model = self._frozen_copy() if config.kl_coef > 0 else None
        self.update_settings = UpdateSettings.from_config(config)
        self.optimizer = _adamw(self.model, config)
        warmup = max(config.warmup_steps, 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
        )
        self.callbacks: list[Callback] = self._builtin_callbacks() + list(callbacks)
        self.eval_history: list[dict[str, float]] = []
        # Per-problem greedy correctness of each evaluation of this process (eval_indices order; not
        # checkpointed): paired before -> after differences (deepgrpo main).
        self.eval_correct: list[np.ndarray] = []
        self._rollout_pool: Any = None  # Ray rollout workers (config.rollout_workers > 0), started on first use
        if config.resume:
            self._resume()

    # -- the envs (owned by self.envs) ------------------------------------------------------------
    @property
    def env(self) -> Any:
        """The root env (``prompts_per_step * roots_per_prompt()`` sub-envs)."""
        return self.envs.root

    @property
    def train_range(self) -> tuple[int, int]:
        """Every training problem index lies in ``[lo, hi)`` (EnvPool.train_range)."""
        return self.envs.train_range

    @property
    def train_indices(self) -> np.ndarray | None:
        """The training problem indices, or None for a procedural source (i.i.d. from ``train_range``)."""
        return self.envs.train_indices

    @property
    def eval_indices(self) -> np.ndarray:
        """Held-out problem indices of the eval env."""
        return self.envs.eval_indices

    @property
    def eval_env_id(self) -> str:
        """The eval env's id."""
        return self.envs.eval_env_id

    def roots_per_prompt(self) -> int:
        """Root rollouts sampled per prompt (GRPO: ``group_size``; the trees: their chains)."""
        return self.config.group_size

    def _check_policy_vocab(self) -> None:
        if self.config.model in (TESTBED, DEEP_TESTBED):
            check_vocab(self.envs.vocab_size, what=f"{self.config.env_id}'s action space")

    def branch(
        self, states: Sequence[EnvState], k: int, *, temperatures: Sequence[float] | None = None, reserve: int = 0
    ) -> RolloutBatch:
        """``k`` continuations of every state (``reset_to`` + one prefill per state, see
        :func:`~deepgrpo_agent.rollout.branch_rollouts`), counted as branch rollouts in the budget.

        The branch env is kept between steps and only rebuilt larger when ``len(states) * k`` (or
        ``reserve``, a size known to be needed later) exceeds it; ``temperatures`` is per state.
        """
        pool = self.rollout_pool()
        if pool is not None:  # Ray rollout workers (docs/ray.md)
            batch: RolloutBatch = pool.branches(list(states), k, self.sampling(), self.generator, temperatures)
        else:
            env = self.envs.branch_env(max(len(states) * k, reserve))
            batch = branch_rollouts(env, self.engine, list(states), k, self.sampling(), generator=self.generator,
                                    temperatures=temperatures)
        self.budget.add(branch_rollouts=len(batch), generated_tokens=batch.generated_tokens,
                        prefilled_tokens=batch.prefilled_tokens)
        return batch

    def sample_roots(
        self, problems: np.ndarray, per_prompt: int, temperatures: np.ndarray | None = None
    ) -> RolloutBatch:
        """``per_prompt`` root rollouts of every problem (:func:`~deepgrpo_agent.rollout.collect_rollouts`
        on the root env, or on the Ray rollout workers), counted as root rollouts in the budget."""
        pool = self.rollout_pool()
        if pool is not None:  # Ray rollout workers (docs/ray.md)
            batch: RolloutBatch = pool.roots(problems, per_prompt, self.sampling(), self.generator, temperatures)
        else:
            batch = collect_rollouts(self.env, self.engine, problems, per_prompt, self.sampling(),
                                     generator=self.generator, temperatures=temperatures)
        if self.config.truncated_roots_fail:
            batch = fail_truncated(batch)
        self.budget.add(root_rollouts=len(batch), generated_tokens=batch.generated_tokens,
                        prefilled_tokens=batch.prefilled_tokens)
        return batch

    def rollout_pool(self) -> Any:
        """The :class:`~deepgrpo_agent.rollout_workers.RolloutWorkerPool` when ``rollout_workers`` > 0
        (started on first use, with the current weights), else None."""
        if self.config.rollout_workers <= 0:
            return None
        if self._rollout_pool is None:
            from deepgrpo_agent.rollout_workers import RolloutWorkerPool

            self._rollout_pool = RolloutWorkerPool.for_trainer(self)
        return self._rollout_pool

    def close_workers(self) -> None:
        """Stops the rollout workers, if any (a later rollout starts new ones)."""
        if self._rollout_pool is not None:
            self._rollout_pool.close()
            self._rollout_pool = None

    # -- setup ------------------------------------------------------------------------------------
    def _frozen_copy(self) -> torch.nn.Module:
        ref = copy.deepcopy(self.model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def _builtin_callbacks(self) -> list[Callback]:
        cfg = self.config
        out: list[Callback] = [JSONLLogger(self.output_dir / "metrics.jsonl")]
        if cfg.tensorboard:
            out.append(TensorBoardLogger(self.output_dir / "tensorboard"))
        if cfg.wandb:
            out.append(WandbLogger("deepgrpo", to_dict(cfg), cfg.run_name))
        if cfg.progress:
            out.append(ProgressBar())
        out += [EvalCallback(cfg.eval_every, cfg.eval_every_tokens), CheckpointCallback(cfg.save_every)]
        return out

    def sampling(self) -> SamplingParams:
        """Sampling settings of the training rollouts."""
        cfg = self.config
        return SamplingParams(cfg.temperature, cfg.top_p, cfg.max_new_tokens)

    # -- the template method ----------------------------------------------------------------------
    def train(self) -> dict[str, float]:
        """Runs until ``total_steps`` or the ``max_generated_tokens`` budget; returns the last step's metrics."""
        for cb in self.callbacks:
            cb.on_train_begin(self)
        if self.step == 0 and (self.config.eval_every > 0 or self.config.eval_every_tokens > 0):
            self.evaluate(0)
        metrics: dict[str, float] = {}
        try:
            while not self.finished:
                metrics = self.train_step()
                for cb in self.callbacks:
                    cb.on_step_end(self, self.step, metrics)
        finally:
            self.close_workers()
        if hasattr(self.model, "save_pretrained"):
            self.export(self.output_dir / "final_model")
        for cb in self.callbacks:
            cb.on_train_end(self)
        return metrics

    @property
    def finished(self) -> bool:
        """True once ``total_steps`` steps ran or the generated-token budget is spent."""
        limit = self.config.max_generated_tokens
        return self.step >= self.config.total_steps or (
            limit is not None and self.budget.generated_tokens >= limit
        )

    def export(self, path: Path) -> Path:
        """Saves the policy (and tokenizer) as a transformers checkpoint directory, atomically.

        ``deepgrpo eval --model PATH`` and ``GRPOConfig(model=PATH)`` load it.
        """
        import shutil
        import tempfile

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
        try:
            self.model.save_pretrained(tmp, safe_serialization=True)  # type: ignore[operator]
            if self.tokenizer is not None and hasattr(self.tokenizer, "save_pretrained"):
                self.tokenizer.save_pretrained(tmp)
            if path.exists():
                shutil.rmtree(path)
            tmp.rename(path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    def train_step(self) -> dict[str, float]:
        """One step: :meth:`collect` -> :meth:`compute_advantages` -> :meth:`update`."""
        t0 = time.perf_counter()
        rollouts = self.collect()
        t1 = time.perf_counter()
        samples, adv_metrics = self.compute_advantages(rollouts)
        metrics = {**rollouts.metrics, **adv_metrics}
        t2 = time.perf_counter()
        metrics.update(self.update(samples))
        t3 = time.perf_counter()
        self.step += 1
        gen = metrics.get("rollout/generated_tokens", 0.0)
        metrics.update({
            "perf/collect_s": t1 - t0, "perf/advantages_s": t2 - t1, "perf/update_s": t3 - t2,
            "perf/step_s": t3 - t0, "perf/generated_tokens_per_s": gen / max(t1 - t0, 1e-9),
            "train/learning_rate": float(self.scheduler.get_last_lr()[0]),
        })
        if self._rollout_pool is not None:
            metrics.update(self._rollout_pool.pop_metrics())
        metrics.update(self.budget.metrics())
        return metrics

    def collect_samples(self) -> tuple[TrainSamples, dict[str, float]]:
        """The first two stages, :meth:`collect` then :meth:`compute_advantages`: the samples the update
        would train on and the step's rollout and advantage metrics."""
        rollouts = self.collect()
        samples, metrics = self.compute_advantages(rollouts)
        return samples, {**rollouts.metrics, **metrics}

    def next_problems(self, count: int) -> np.ndarray:
        """The next ``count`` training problems: epochs of seeded permutations of the train split, or
        i.i.d. draws when the split is too large to permute (procedural sources)."""
        lo, hi = self.train_range
        pool = self.train_indices
        if pool is None and hi - lo > _MAX_EPOCH_SIZE:
            # A procedural source (Arithmetic-v0 has 2**31 problems): draw i.i.d., never materialize.
            return self.rng.integers(lo, hi, size=count, dtype=np.int64)
        if pool is None:
            pool = np.arange(lo, hi)
        out: list[int] = []
        while len(out) < count:
            if self._order.size == 0:
                self._order = self.rng.permutation(pool)
            take = min(count - len(out), self._order.size)
            out.extend(self._order[:take].tolist())
            self._order = self._order[take:]
        return np.asarray(out, dtype=np.int64)

    # -- stage 1: collect --------------------------------------------------------------------------
    def collect(self) -> Rollouts:
        """Root rollouts of one step, with dynamic sampling (docs/methods.md §1).

        With ``dynamic_sampling="refill"`` more prompts are sampled until ``prompts_per_step`` groups
        carry signal (:meth:`observe_roots`) or ``max_refill_rounds`` extra rounds ran.
        """
        cfg = self.config
        self.model.eval()
        per_prompt = self.roots_per_prompt()
        batches: list[RolloutBatch] = []
        signal: list[np.ndarray] = []
        mixed_groups, rounds = 0, 0
        while True:
            count = cfg.prompts_per_step - mixed_groups if rounds else cfg.prompts_per_step
            problems = self.next_problems(count)
            batch = self.sample_roots(problems, per_prompt, self.root_temperatures(problems))
            batches.append(batch)
            signal.append(self.observe_roots(batch))
            mixed_groups += int(signal[-1].sum()) // per_prompt
            rounds += 1
            if (cfg.dynamic_sampling != "refill" or mixed_groups >= cfg.prompts_per_step
                    or rounds > cfg.max_refill_rounds):
                break
        metrics = self.rollout_metrics(batches)
        metrics["rollout/refill_rounds"] = float(rounds - 1)
        return Rollouts(batches, signal, metrics)

    def observe_roots(self, batch: RolloutBatch) -> np.ndarray:
        """Called on each root batch as it is sampled; returns (N,) bool, the rows whose group carries
        signal (GRPO: not all rewards equal). ERPO also updates its history tracker here."""
        rewards = torch.as_tensor(batch.rewards, dtype=torch.float32)
        groups = torch.as_tensor(batch.group, dtype=torch.int64)
        return ~zero_variance_groups(rewards, groups).numpy()

    # -- stage 2: compute advantages ------------------------------------------------------------------
    def compute_advantages(self, rollouts: Rollouts) -> tuple[TrainSamples, dict[str, float]]:
        """Group advantages of the root rollouts; dynamic sampling drops rows without signal.

        Returns:
            The samples to train on and advantage metrics (none for GRPO).
        """
        parts = []
        for batch, signal in zip(rollouts.roots, rollouts.signal):
            samples = TrainSamples.from_batch(batch, self.root_advantages(batch), GLOBAL_STREAM)
            parts.append(samples.select(signal) if self.config.dynamic_sampling != "off" else samples)
        out = TrainSamples.concat(parts)
        if self.config.drop_zero_advantage_roots:  # the paper code: such rows leave the token-mean denominator
            out = out.select(np.abs(out.advantages) >= ZERO_ADVANTAGE)
        return out, {}

    def root_advantages(self, batch: RolloutBatch) -> np.ndarray:
        """(N,) float32 group advantages of one root batch (``advantage_scale``; ERPO adds its pseudo-advantage)."""
        rewards = torch.as_tensor(batch.rewards, dtype=torch.float32)
        groups = torch.as_tensor(batch.group, dtype=torch.int64)
        return group_advantages(rewards, groups, scale=self.config.advantage_scale).numpy().astype(np.float32)

    def root_temperatures(self, problems: np.ndarray) -> np.ndarray | None:
        """Sampling temperature of each problem's root group; None = ``config.temperature`` for all.

        GRPO samples every group at the config's temperature; ERPO raises it per prompt.
        """
        return None

    def stream_weights(self) -> dict[int, float]:
        """Loss weight per stream id; GRPO has only the global stream."""
        return {GLOBAL_STREAM: 1.0}

    # -- stage 3: update --------------------------------------------------------------------------
    def update(self, samples: TrainSamples) -> dict[str, float]:
        """``ppo_epochs`` optimizer steps on ``samples`` (see :func:`~deepgrpo_agent.update.policy_update`)."""
        self.model.train()
        metrics = policy_update(self.model, self.optimizer, self.scheduler, samples, self.update_settings,
                                stream_weights=self.stream_weights(), ref_model=self.ref_model, device=self.device,
                                vocab_size=self.vocab_size, precision=self.precision)
        self.budget.add(trained_tokens=int(sum(len(t) for t in samples.targets)) * self.config.ppo_epochs)
        self.engine.sync_weights(self.model)
        if self._rollout_pool is not None:
            self._rollout_pool.broadcast(self.model)
        return metrics

    # -- metrics ----------------------------------------------------------------------------------
    def rollout_metrics(self, batches: Sequence[RolloutBatch]) -> dict[str, float]:
        """Reward, accuracy, group statistics, entropy and length of this step's root rollouts."""
        rewards = np.concatenate([b.rewards for b in batches])
        offsets = np.cumsum([0] + [int(b.group.max()) + 1 if len(b) else 0 for b in batches])
        groups = np.concatenate([b.group + offsets[i] for i, b in enumerate(batches)])  # distinct ids per batch
        stats = group_stats(torch.as_tensor(rewards, dtype=torch.float32), torch.as_tensor(groups))
        lengths = np.array([len(x) for b in batches for x in b.new_ids])
        entropies = np.concatenate([np.concatenate(b.entropies) for b in batches if len(b.entropies)])
        correct = np.array([c is True for b in batches for c in b.correct])
        return {
            "rollout/reward_mean": float(np.nanmean(rewards)) if np.isfinite(rewards).any() else float("nan"),
            "rollout/accuracy": float(correct.mean()),
            "rollout/response_length": float(lengths.mean()),
            "rollout/truncated_fraction": float(np.concatenate([b.truncated for b in batches]).mean()),
            "rollout/entropy": float(entropies.mean()) if entropies.size else float("nan"),
            "rollout/zero_variance_fraction": float(stats.zero_variance_fraction),
            "rollout/all_correct_fraction": float(stats.all_correct_fraction),
            "rollout/all_wrong_fraction": float(stats.all_wrong_fraction),
            "rollout/unscorable_fraction": float(stats.unscorable_fraction),
            "rollout/generated_tokens": float(sum(b.generated_tokens for b in batches)),
            "rollout/sequences": float(len(rewards)),
            "perf/root_prefill_s": float(sum(b.prefill_s for b in batches)),
            "perf/root_decode_s": float(sum(b.decode_s for b in batches)),
        }

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, step: int | None = None) -> dict[str, float]:
        """Greedy accuracy and pass@k on the held-out problems (see :func:`~deepgrpo_agent.evaluation.evaluate_on_pool`)."""
        step = self.step if step is None else step
        correct: list[bool] = []
        metrics = evaluate_on_pool(self.envs, self.engine, self.config, step=step, correct_out=correct)
        self.eval_correct.append(np.array(correct, dtype=bool))
        self.model.train()
        metrics["budget/generated_tokens"] = float(self.budget.generated_tokens)  # x axis of equal-budget curves
        self.eval_history.append({"step": float(step), **metrics})
        for cb in self.callbacks:
            cb.on_evaluate(self, step, metrics)
        return metrics

    # -- checkpoints ------------------------------------------------------------------------------
    def strategy_state(self) -> dict[str, Any]:
        """State of the exploration strategy (subclasses extend it)."""
        return {}

    def load_strategy_state(self, state: dict[str, Any]) -> None:
        """Restores :meth:`strategy_state` output."""

    def save_checkpoint(self) -> Path:
        """Writes a complete checkpoint of the current step atomically."""
        state = {
            "config": to_dict(self.config),
            "algo": self.algo,
            "budget": dataclasses.asdict(self.budget),
            "numpy_rng": self.rng.bit_generator.state,
            "order": self._order,
            "generator": self.generator.get_state(),
            "scheduler": self.scheduler.state_dict(),
            "strategy": self.strategy_state(),
            "eval_history": self.eval_history,
        }
        root = self.output_dir / "checkpoints"
        if self.ref_model is not None and not (root / "reference.pt").is_file():
            ckpt.save_tensors_atomic(root / "reference.pt", self.ref_model.state_dict())
        return ckpt.save_checkpoint(root, self.step, model=self.model, optimizer=self.optimizer,
                                    trainer_state=state)

    def _resume(self) -> None:
        found = ckpt.resume_checkpoint(self.output_dir / "checkpoints", model=self.model, optimizer=self.optimizer)
        if found is None:
            return  # nothing to resume: start fresh
        path, state = found  # the newest checkpoint that verifies (damaged newer ones are skipped, with a warning)
        if state.get("algo") != self.algo:
            raise ValueError(f"Checkpoint {path} is from algo {state.get('algo')!r}, not {self.algo!r}.")
        self.step = int(state["step"])
        self.budget = Budget(**state["budget"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self._order = np.asarray(state["order"], dtype=np.int64)
        self.generator.set_state(state["generator"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.load_strategy_state(state["strategy"])
        self.eval_history = list(state.get("eval_history", []))
        if self.ref_model is not None:
            # The reference is the policy at step 0, saved beside the checkpoints; never re-anchor it.
            ref_path = self.output_dir / "checkpoints" / "reference.pt"
            self.ref_model.load_state_dict(ckpt.load_tensors(ref_path, map_location=self.device))
        self.engine.sync_weights(self.model)


__all__ = ["GLOBAL_STREAM", "Budget", "GRPOTrainer", "TrainSamples"]
