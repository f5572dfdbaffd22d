"""GRPOTrainer: collect rollouts -> compute advantages -> update, as a template method.

Deviations from the papers (methods.md §1):
- The loss is computed on per-token log-probs of the temperature-scaled policy (logits / T), the
  distribution the rollouts were sampled from, as TRL does.
- With ``ppo_epochs == 1`` the "old" policy is the current one detached (ratio exactly 1, as in the
  DEEP-GRPO runs); with more epochs the old log-probs come from a no-grad forward pass before the
  first update, not from the KV-cache rollout (they agree to ~1e-5 in fp32; see the tests).
- Unscorable rewards (verifier returned None or timed out) get advantage 0 and are excluded from
  their group's mean, as TRL does, and are counted in ``rollout/unscorable_fraction``.

Subclasses (DEEP-GRPO) override :meth:`collect` to add samples of other streams and
:meth:`stream_weights` to weigh them; ERPO overrides :meth:`root_temperatures` (per-prompt sampling
temperatures, which the loss then scores each sample at) and :meth:`compute_advantages`; everything
else is shared.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import envs_registry
from deepgrpo_agent import checkpoint as ckpt
from deepgrpo_agent.advantages import group_advantages, group_stats
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
from deepgrpo_agent.engine import make_engine
from deepgrpo_agent.engine.protocol import Engine, SamplingParams
from deepgrpo_agent.evaluation import evaluate_policy
from deepgrpo_agent.policy import RANDOM_TINY, load_policy, random_tiny_model, resolve_device, resolve_dtype
from deepgrpo_agent.rollout import RolloutBatch, branch_rollouts, collect_rollouts
from deepgrpo_agent.testbed import TESTBED, check_vocab
from deepgrpo_agent.update import policy_update
from deepgrpo_env.state import EnvState

_MAX_EPOCH_SIZE = 10_000_000  # above this many training problems, sample i.i.d. instead of by epochs

GLOBAL_STREAM = 0
"""Stream id of root rollouts (the GRPO stream)."""


@dataclass
class TrainSamples:
    """What the update trains on: one row per sequence.

    Attributes:
        contexts: Prompt (+ prefix) ids per row: conditioning only, no loss (gradient-masked).
        targets: Generated ids per row: these tokens get the loss.
        advantages: (N,) advantage broadcast to every target token.
        streams: (N,) stream id (0 = global GRPO stream; DEEP-GRPO adds 1 = local pivot groups).
        temperatures: (N,) temperature each row was sampled at, which the loss scores it at (ERPO);
            None, or nan in a row, = ``config.temperature``.
    """

    contexts: list[np.ndarray]
    targets: list[np.ndarray]
    advantages: np.ndarray
    streams: np.ndarray
    temperatures: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.targets)

    @staticmethod
    def concat(parts: Sequence[TrainSamples]) -> TrainSamples:
        temps = None
        if any(p.temperatures is not None for p in parts):  # parts without them keep the config's (nan)
            temps = np.concatenate([np.full(len(p), np.nan) if p.temperatures is None
                                    else np.asarray(p.temperatures, dtype=np.float64) for p in parts])
        return TrainSamples(
            [c for p in parts for c in p.contexts],
            [t for p in parts for t in p.targets],
            np.concatenate([p.advantages for p in parts]) if parts else np.zeros(0),
            np.concatenate([p.streams for p in parts]).astype(np.int64) if parts else np.zeros(0, np.int64),
            temps,
        )

    def select(self, keep: np.ndarray) -> TrainSamples:
        idx = np.flatnonzero(keep)
        return TrainSamples([self.contexts[i] for i in idx], [self.targets[i] for i in idx],
                            self.advantages[idx], self.streams[idx],
                            None if self.temperatures is None else self.temperatures[idx])


@dataclass
class Budget:
    """Cumulative generation budget (methods.md §5)."""

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
    """AdamW, fused where torch supports it (10x faster steps on the CPU for a 135M model)."""
    kwargs: dict[str, Any] = dict(lr=config.learning_rate, weight_decay=config.weight_decay,
                                  betas=config.adam_betas)
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # device or dtype without a fused kernel
        return torch.optim.AdamW(params, **kwargs)


def _default_eval_env(env_id: str) -> str | None:
    return {"MathReasoning-v0": "MathReasoning-GSM8K-test-v0"}.get(env_id)


class GRPOTrainer:
    """Trains a causal LM on a deepgrpo env with GRPO (methods.md §1).

    Args:
        config: The run's configuration.
        model: A ready ``torch.nn.Module`` causal LM to train instead of loading ``config.model``.
        tokenizer: The tokenizer for ``model`` (MathReasoning envs); envs with their own codec
            (Arithmetic-v0) ignore it.
        callbacks: Extra callbacks, run after the built-in ones.
    """

    algo = "grpo"

    def __init__(
        self,
        config: GRPOConfig,
        *,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        envs_registry.check_id(config.env_id)
        self.config = config
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        if model is None and config.model != RANDOM_TINY:
            model, tokenizer = load_policy(
                config.model, device=self.device, dtype=resolve_dtype(config.dtype, self.device)
            )
        self.tokenizer = tokenizer
        self.output_dir = Path(config.output_dir)
        self.step = 0
        self.budget = Budget()
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self.env = self._make_env(config.env_id, config.prompts_per_step * config.group_size,
                                  config.max_new_tokens)
        if config.model == TESTBED:
            check_vocab(int(self.env.single_action_space.n), what=f"{config.env_id}'s action space")
        self._setup_problem_split()
        if model is None:  # "random-tiny": sized to the env, so made after it
            model = random_tiny_model(int(self.env.single_action_space.n), config.seed)
        self.model = model.to(self.device)
        self.engine = self._make_engine()
        self.ref_model = self._frozen_copy() if config.kl_coef > 0 else None
        self.optimizer = _adamw(self.model, config)
        warmup = max(config.warmup_steps, 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
        )
        self.callbacks: list[Callback] = self._builtin_callbacks() + list(callbacks)
        self.eval_history: list[dict[str, float]] = []
        if config.resume:
            self._resume()

    def branch(
        self, states: Sequence[EnvState], k: int, *, temperatures: Sequence[float] | None = None, reserve: int = 0
    ) -> RolloutBatch:
        """``k`` continuations of every state (``reset_to`` + one prefill per state, see
        :func:`~deepgrpo_agent.rollout.branch_rollouts`), counted as branch rollouts in the budget.

        The vector env is kept between steps and only rebuilt larger when ``len(states) * k`` (or
        ``reserve``, a size known to be needed later) exceeds it; ``temperatures`` is per state.
        """
        needed = max(len(states) * k, reserve)
        env = getattr(self, "_branch_env", None)
        if env is None or env.num_envs < needed:
            if env is not None:
                env.close()
            env = self._branch_env = self._make_env(self.config.env_id, needed, self.config.max_new_tokens)
        batch = branch_rollouts(env, self.engine, list(states), k, self.sampling(), generator=self.generator,
                                temperatures=temperatures)
        self.budget.add(branch_rollouts=len(batch), generated_tokens=batch.generated_tokens,
                        prefilled_tokens=batch.prefilled_tokens)
        return batch

    # -- setup ------------------------------------------------------------------------------------
    def _make_env(self, env_id: str, num_envs: int, max_new_tokens: int) -> Any:
        kwargs = dict(self.config.env_kwargs)
        kwargs.setdefault("max_response_tokens", max_new_tokens)
        if env_id.split(":")[-1].startswith("MathReasoning") and self.tokenizer is not None:
            kwargs.setdefault("tokenizer", self.tokenizer)
        return gym.make_vec(env_id, num_envs=num_envs, autoreset_mode="Disabled", copy=False, **kwargs)

    def _make_engine(self) -> Engine:
        """The rollout engine named by ``config.engine``, built around the policy."""
        cfg = self.config
        limits = getattr(self.env, "unwrapped", self.env).limits
        longest = limits.max_prompt_tokens + max(cfg.max_new_tokens, cfg.eval_max_new_tokens or 0)
        positions = int(getattr(getattr(self.model, "config", None), "max_position_embeddings", 0) or 0)
        return make_engine(cfg.engine, self.model, vocab_size=int(self.env.single_action_space.n),
                           max_model_len=max(longest, positions), config=cfg)

    def _setup_problem_split(self) -> None:
        cfg = self.config
        n = len(self.env.unwrapped.core.source) if hasattr(self.env, "unwrapped") else len(self.env.core.source)
        eval_id = cfg.eval_env_id or _default_eval_env(cfg.env_id)
        held_out = cfg.eval_problems if eval_id in (None, cfg.env_id) else 0
        if n - held_out < cfg.prompts_per_step:
            raise ValueError(
                f"{cfg.env_id} has {n} problems; holding out {held_out} for evaluation leaves fewer than "
                f"`prompts_per_step`={cfg.prompts_per_step}. Lower `eval_problems` or use another env."
            )
        pool = n - held_out if cfg.train_problems == 0 else min(cfg.train_problems, n - held_out)
        if pool < cfg.prompts_per_step:
            raise ValueError(
                f"Expected `train_problems` >= `prompts_per_step`={cfg.prompts_per_step}, got {cfg.train_problems}; "
                "raise it or use 0 to train on the whole split."
            )
        self.train_range = (0, pool)
        self.eval_env_id = eval_id or cfg.env_id
        eval_n = n if self.eval_env_id == cfg.env_id else None
        self.eval_indices = (
            np.arange(n - held_out, n) if eval_n is not None else np.arange(cfg.eval_problems)
        )
        self._order: np.ndarray = np.zeros(0, dtype=np.int64)

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
        while not self.finished:
            metrics = self.train_step()
            for cb in self.callbacks:
                cb.on_step_end(self, self.step, metrics)
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
        """One step: :meth:`collect` -> :meth:`compute_advantages` (inside collect) -> :meth:`update`."""
        t0 = time.perf_counter()
        samples, metrics = self.collect()
        t1 = time.perf_counter()
        metrics.update(self.update(samples))
        t2 = time.perf_counter()
        self.step += 1
        gen = metrics.get("rollout/generated_tokens", 0.0)
        metrics.update({
            "perf/collect_s": t1 - t0, "perf/update_s": t2 - t1, "perf/step_s": t2 - t0,
            "perf/generated_tokens_per_s": gen / max(t1 - t0, 1e-9),
            "train/learning_rate": float(self.scheduler.get_last_lr()[0]),
        })
        metrics.update(self.budget.metrics())
        return metrics

    def next_problems(self, count: int) -> np.ndarray:
        """The next ``count`` training problems: epochs of seeded permutations of the train split, or
        i.i.d. draws when the split is too large to permute (procedural sources)."""
        lo, hi = self.train_range
        if hi - lo > _MAX_EPOCH_SIZE:
            # A procedural source (Arithmetic-v0 has 2**31 problems): draw i.i.d., never materialize.
            return self.rng.integers(lo, hi, size=count, dtype=np.int64)
        out: list[int] = []
        while len(out) < count:
            if self._order.size == 0:
                self._order = self.rng.permutation(np.arange(lo, hi))
            take = min(count - len(out), self._order.size)
            out.extend(self._order[:take].tolist())
            self._order = self._order[take:]
        return np.asarray(out, dtype=np.int64)

    def collect(self) -> tuple[TrainSamples, dict[str, float]]:
        """The samples of one step and their rollout metrics (GRPO: root rollouts only)."""
        samples, _, metrics = self.collect_roots()
        return samples, metrics

    def collect_roots(self) -> tuple[TrainSamples, list[RolloutBatch], dict[str, float]]:
        """Root rollouts and their group advantages, with dynamic sampling (methods.md §1).

        Returns:
            The kept samples, every root batch sampled (refills included) and their metrics.
        """
        cfg = self.config
        self.model.eval()
        kept: list[TrainSamples] = []
        batches: list[RolloutBatch] = []
        mixed_groups, rounds = 0, 0
        while True:
            count = cfg.prompts_per_step - mixed_groups if rounds else cfg.prompts_per_step
            problems = self.next_problems(count)
            batch = collect_rollouts(self.env, self.engine, problems, cfg.group_size, self.sampling(),
                                     generator=self.generator, temperatures=self.root_temperatures(problems))
            batches.append(batch)
            self.budget.add(root_rollouts=len(batch), generated_tokens=batch.generated_tokens,
                            prefilled_tokens=batch.prefilled_tokens)
            samples, zero_var = self.compute_advantages(batch)
            if cfg.dynamic_sampling != "off":
                samples = samples.select(~zero_var)
            kept.append(samples)
            mixed_groups += int((~zero_var).sum()) // cfg.group_size
            rounds += 1
            if (cfg.dynamic_sampling != "refill" or mixed_groups >= cfg.prompts_per_step
                    or rounds > cfg.max_refill_rounds):
                break
        metrics = self.rollout_metrics(batches)
        metrics["rollout/refill_rounds"] = float(rounds - 1)
        return TrainSamples.concat(kept), batches, metrics

    def compute_advantages(self, batch: RolloutBatch) -> tuple[TrainSamples, np.ndarray]:
        """Group advantages of root rollouts; also returns the zero-variance-group mask."""
        from deepgrpo_agent.advantages import zero_variance_groups

        rewards = torch.as_tensor(batch.rewards, dtype=torch.float32)
        groups = torch.as_tensor(batch.group, dtype=torch.int64)
        adv = group_advantages(rewards, groups, scale=self.config.advantage_scale).numpy()
        zero_var = zero_variance_groups(rewards, groups).numpy()
        contexts = [np.concatenate([p, x]) for p, x in zip(batch.prompt_ids, batch.prefix_ids)]
        samples = TrainSamples(contexts, list(batch.new_ids), adv.astype(np.float32),
                               np.full(len(adv), GLOBAL_STREAM, dtype=np.int64), batch.temperatures)
        return samples, zero_var

    def root_temperatures(self, problems: np.ndarray) -> np.ndarray | None:
        """Sampling temperature of each problem's root group; None = ``config.temperature`` for all.

        GRPO samples every group at the config's temperature; ERPO raises it per prompt.
        """
        return None

    def stream_weights(self) -> dict[int, float]:
        """Loss weight per stream id; GRPO has only the global stream."""
        return {GLOBAL_STREAM: 1.0}

    def update(self, samples: TrainSamples) -> dict[str, float]:
        """``ppo_epochs`` optimizer steps on ``samples`` (see :func:`policy_update`)."""
        self.model.train()
        metrics = policy_update(self, samples)
        self.budget.add(trained_tokens=int(sum(len(t) for t in samples.targets)) * self.config.ppo_epochs)
        self.engine.sync_weights(self.model)
        return metrics

    # -- metrics ----------------------------------------------------------------------------------
    def rollout_metrics(self, batches: Sequence[RolloutBatch]) -> dict[str, float]:
        """Reward, accuracy, group statistics, entropy and length of this step's root rollouts."""
        rewards = np.concatenate([b.rewards for b in batches])
        groups = np.concatenate([b.group + 10_000 * i for i, b in enumerate(batches)])
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
        """Greedy accuracy and pass@k on the held-out problems."""
        cfg = self.config
        step = self.step if step is None else step
        if not hasattr(self, "_eval_env"):
            max_tokens = cfg.eval_max_new_tokens or cfg.max_new_tokens
            self._eval_env = self._make_env(self.eval_env_id, len(self.eval_indices) * max(cfg.pass_k, 1),
                                            max_tokens)
        metrics = evaluate_policy(
            self._eval_env, self.engine, self.eval_indices.tolist(),
            max_new_tokens=cfg.eval_max_new_tokens or cfg.max_new_tokens, pass_k=cfg.pass_k,
            temperature=cfg.temperature, seed=cfg.seed + 7919 * (step + 1),
        )
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
        path = ckpt.latest_checkpoint(self.output_dir / "checkpoints")
        if path is None:
            return  # nothing to resume: start fresh
        state = ckpt.load_checkpoint(path, model=self.model, optimizer=self.optimizer)
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
            self.ref_model.load_state_dict(torch.load(ref_path, map_location=self.device))
        self.engine.sync_weights(self.model)
