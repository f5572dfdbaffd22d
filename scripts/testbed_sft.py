"""The arithmetic testbed's corpus generator, supervised training loop and analyses (not part of the library).

``scripts/train_testbed.py`` uses this module to retrain the policy shipped in
``deepgrpo_agent/testbed_model/``; the tests import it as ``scripts.testbed_sft``. The design, the
train/test separation and the measured numbers are in docs/testbed.md; the package itself
(:mod:`deepgrpo_agent.testbed`) only loads the shipped weights.
"""


from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from deepgrpo_agent.testbed import (
    TESTBED,
    TESTBED_DIR,
    TESTBED_ENV_KWARGS,
    TESTBED_MAX_NEW_TOKENS,
    check_vocab,
    load_testbed,
    shipped_recipe,
)
from deepgrpo_env.arithmetic import (
    MAX_VALUE,
    PROMPT,
    RETRACT,
    ArithmeticSource,
    CharCodec,
    Expression,
    Step,
    default_limits,
    next_step,
    parse_expression,
    rewrite,
    solution_steps,
    solution_text,
)

HELDOUT_GUARD = 4096
"""The corpus skips expressions of the last this-many indices of the env's default problem family."""

ENV_FAMILY_SEED = 0
"""Arithmetic-v0's default problem-family seed (where RL training and evaluation problems come from)."""

_SLIP_OFFSETS = (-10, -2, -1, 1, 2, 10)  # wrong tens digit, or off by one or two


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the testbed policy: corpus, model shape and optimisation."""

    level: int = 3
    """Arithmetic-v0 level (operations per problem) of the corpus."""
    max_operand: int = 9
    """Largest operand of the corpus problems."""
    family_seed: int = 1
    """Problem family of the corpus (the env's default is 0, see the module docstring)."""
    slip_prob: float = 0.08
    """Per-step probability of an uncorrected slip (the solution continues from the wrong value)."""
    fix_prob: float = 0.02
    """Per-step probability of a slip corrected on the next line with a ``no ...`` retraction."""
    hidden_size: int = 128
    """Width of the Llama."""
    num_layers: int = 3
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads (as many key/value heads: grouped-query attention saves nothing at this size)."""
    intermediate_size: int = 384
    """Width of the SwiGLU MLP."""
    steps: int = 300
    """Optimizer steps; every step draws a fresh batch of problems."""
    batch_size: int = 256
    """Solutions per optimizer step."""
    learning_rate: float = 2e-3
    """AdamW learning rate (linear warm-up, then constant)."""
    warmup_steps: int = 50
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    seed: int = 0
    """Seed of the initialisation and of the corpus stream."""

    def __post_init__(self) -> None:
        for name in ("slip_prob", "fix_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Expected `{name}` in [0, 1], got {value!r}.")
        if self.slip_prob + self.fix_prob > 1.0:
            raise ValueError(
                f"Expected `slip_prob` + `fix_prob` <= 1 (they split one per-step draw), got "
                f"{self.slip_prob} + {self.fix_prob}."
            )
        for name in ("level", "max_operand", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"Expected `{name}` >= 1, got {getattr(self, name)!r}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"Expected `hidden_size` divisible by `num_heads`, got {self.hidden_size} and {self.num_heads}."
            )
        if not self.learning_rate > 0:
            raise ValueError(f"Expected `learning_rate` > 0, got {self.learning_rate!r}.")


# -- the corpus -----------------------------------------------------------------------------------------
class SlippedSolution(NamedTuple):
    """A step-by-step solution with its slips counted (``steps`` counts reference steps)."""

    text: str
    steps: int
    uncorrected: int
    corrected: int


def _stays_in_range(values: list[int], ops: list[str]) -> bool:
    steps = solution_steps(Expression(tuple(values), tuple(ops))) if ops else []
    return 0 <= values[0] <= MAX_VALUE and all(0 <= s.value <= MAX_VALUE for s in steps)


def _wrong_value(values: list[int], ops: list[str], step: Step, rng: np.random.Generator,
                 *, carried: bool) -> int | None:
    """A slipped result for ``step``; if ``carried``, one whose continuation stays in [0, MAX_VALUE]."""
    for d in rng.permutation(_SLIP_OFFSETS):
        wrong = step.value + int(d)
        if not 0 <= wrong <= MAX_VALUE:
            continue
        if not carried or _stays_in_range(*rewrite(values, ops, step, wrong)):
            return wrong
    return None  # no slip keeps the solution in range (rare): the step is written correctly


def slipped_solution(
    problem: Expression | str, rng: np.random.Generator, slip_prob: float, fix_prob: float = 0.0
) -> SlippedSolution:
    """A solution whose steps slip at random (see the module docstring); the text has no EOS.

    Each step draws once: below ``slip_prob`` an uncorrected slip, below ``slip_prob + fix_prob`` a
    slip corrected on the next line, otherwise the right line. Without slips the text equals
    :func:`~deepgrpo_env.arithmetic.solution_text`. A drawn slip for which no wrong value keeps every
    later result in ``[0, MAX_VALUE]`` is written correctly instead (rare; :func:`slip_rate` measures
    the realised rate).

    Args:
        problem: The expression, or its text as in the prompt (e.g. ``"3+4*2"``).
        rng: Source of all randomness.
        slip_prob: Per-step probability of an uncorrected slip.
        fix_prob: Per-step probability of a corrected slip.

    Raises:
        ValueError: If the probabilities are outside [0, 1] or sum to more than 1.
    """
    if not (0.0 <= slip_prob <= 1.0 and 0.0 <= fix_prob <= 1.0 and slip_prob + fix_prob <= 1.0):
        raise ValueError(
            f"Expected `slip_prob`, `fix_prob` in [0, 1] with sum <= 1, got {slip_prob!r} and {fix_prob!r}."
        )
    expression = parse_expression(problem) if isinstance(problem, str) else problem
    values, ops = list(expression.operands), list(expression.ops)
    lines: list[str] = []
    steps = uncorrected = corrected = 0
    while ops:
        step = next_step(values, ops)
        steps += 1
        draw = rng.random()
        value = step.value
        wrong = None
        if draw < slip_prob + fix_prob:
            wrong = _wrong_value(values, ops, step, rng, carried=draw < slip_prob)
        if wrong is None:
            lines.append(step.line())
        elif draw < slip_prob:
            lines.append(step.line(wrong))
            value = wrong
            uncorrected += 1
        else:
            lines += [step.line(wrong), RETRACT + step.line()]
            corrected += 1
        values, ops = rewrite(values, ops, step, value)
    lines.append(f"={values[0]}")
    return SlippedSolution("\n".join(lines), steps, uncorrected, corrected)


def slip_rate(recipe: Recipe, num_problems: int, seed: int = 0) -> dict[str, float]:
    """Realised per-step rates of uncorrected and corrected slips over ``num_problems`` corpus problems."""
    rng = np.random.default_rng(seed)
    source = ArithmeticSource(recipe.level, seed=recipe.family_seed, max_operand=recipe.max_operand)
    counts = np.zeros(3)
    for index in rng.integers(len(source), size=num_problems):
        s = slipped_solution(source.expression(int(index)), rng, recipe.slip_prob, recipe.fix_prob)
        counts += (s.steps, s.uncorrected, s.corrected)
    return {"uncorrected": counts[1] / counts[0], "corrected": counts[2] / counts[0]}


def heldout_expressions(level: int, max_operand: int, count: int = HELDOUT_GUARD) -> frozenset[str]:
    """Expressions of the last ``count`` indices of the env's default family (the trainer's held-out slice)."""
    source = ArithmeticSource(level, seed=ENV_FAMILY_SEED, max_operand=max_operand)
    n = len(source)
    return frozenset(source.expression(i).text() for i in range(n - count, n))


class SFTBatch(NamedTuple):
    """A right-padded batch; ``labels`` is -100 on the prompt and padding (loss on the response only)."""

    input_ids: torch.Tensor  # (B, T) int64
    attention_mask: torch.Tensor  # (B, T) int64
    labels: torch.Tensor  # (B, T) int64


def encode_example(question: str, response: str, codec: CharCodec) -> tuple[list[int], int]:
    """Prompt ids exactly as Arithmetic-v0 shows them, then the response and EOS; and the prompt length."""
    prompt = PROMPT.encode(codec, question).tolist()
    return prompt + codec.encode(response) + [codec.eos_token_id], len(prompt)


def collate(examples: Sequence[tuple[list[int], int]], codec: CharCodec) -> SFTBatch:
    """Pads ``(ids, prompt_length)`` pairs on the right into an :class:`SFTBatch`."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), codec.pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, prompt_length) in enumerate(examples):
        t = torch.tensor(ids, dtype=torch.long)
        input_ids[row, : len(ids)] = t
        labels[row, prompt_length : len(ids)] = t[prompt_length:]
        mask[row, : len(ids)] = 1
    return SFTBatch(input_ids, mask, labels)


class CorpusStream:
    """An endless, seeded stream of SFT batches: fresh corpus problems, slipped solutions.

    Args:
        recipe: Level, operands, family and slip rates of the corpus.
        rng: Source of the problem choice and the slips.
        exclude: Expressions never to train on (default: :func:`heldout_expressions` of the level).
    """

    def __init__(self, recipe: Recipe, rng: np.random.Generator, exclude: frozenset[str] | None = None) -> None:
        self.recipe = recipe
        self.rng = rng
        self.codec = CharCodec()
        self.source = ArithmeticSource(recipe.level, seed=recipe.family_seed, max_operand=recipe.max_operand)
        self.exclude = heldout_expressions(recipe.level, recipe.max_operand) if exclude is None else exclude
        self.skipped = 0

    def batch(self, size: int) -> SFTBatch:
        examples: list[tuple[list[int], int]] = []
        while len(examples) < size:
            expression = self.source.expression(int(self.rng.integers(len(self.source))))
            question = expression.text()
            if question in self.exclude:
                self.skipped += 1
                continue
            solution = slipped_solution(expression, self.rng, self.recipe.slip_prob, self.recipe.fix_prob)
            examples.append(encode_example(question, solution.text, self.codec))
        return collate(examples, self.codec)


# -- the model and its training -----------------------------------------------------------------------
def model_config(recipe: Recipe) -> Any:
    """The ``LlamaConfig`` of the testbed: CharCodec's vocabulary and special ids, tied embeddings."""
    from transformers import LlamaConfig

    codec = CharCodec()
    prompt, response = default_limits(recipe.level, recipe.max_operand)
    return LlamaConfig(
        vocab_size=codec.vocab_size, hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers, num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads, max_position_embeddings=max(512, prompt + response),
        tie_word_embeddings=True, pad_token_id=codec.pad_token_id, bos_token_id=codec.bos_token_id,
        eos_token_id=codec.eos_token_id,
    )


def _lr_factor(recipe: Recipe) -> Callable[[int], float]:
    # Warm-up, then constant: a run of N steps is exactly the first N steps of a longer run, so the
    # step count can be chosen by evaluating snapshots of one run (and a cut run resumes exactly).
    return lambda step: min(1.0, (step + 1) / recipe.warmup_steps) if recipe.warmup_steps else 1.0


class SFTRun:
    """Supervised training of the testbed policy from scratch, resumable from a snapshot.

    Args:
        recipe: What to train.
    """

    def __init__(self, recipe: Recipe) -> None:
        from transformers import LlamaForCausalLM

        self.recipe = recipe
        torch.manual_seed(recipe.seed)
        self.model = LlamaForCausalLM(model_config(recipe)).float()
        self.stream = CorpusStream(recipe, np.random.default_rng(recipe.seed))
        named = list(self.model.named_parameters())
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": recipe.weight_decay},
             {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}],  # norms: no decay
            lr=recipe.learning_rate, betas=(0.9, 0.98),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(recipe))
        self.step = 0
        self.losses: list[float] = []
        self.seconds = 0.0

    def train(
        self,
        until: int,
        *,
        log_every: int = 50,
        log: Callable[[str], None] | None = print,
        every: int = 0,
        on_every: Callable[[SFTRun], None] | None = None,
    ) -> SFTRun:
        """Trains up to step ``until``, calling ``on_every(self)`` each ``every`` steps; returns self."""
        self.model.train()
        while self.step < until:
            t0 = time.perf_counter()
            batch = self.stream.batch(self.recipe.batch_size)
            out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            self.losses.append(out.loss.item())
            self.seconds += time.perf_counter() - t0
            if log is not None and log_every and (self.step % log_every == 0 or self.step == until):
                log(f"step {self.step:5d}/{until}  loss {np.mean(self.losses[-log_every:]):.4f}  "
                    f"{self.seconds:.0f} s")
            if on_every is not None and every and self.step % every == 0:
                self.model.eval()
                on_every(self)
                self.model.train()
        self.model.eval()
        return self

    def save_snapshot(self, path: str | Path) -> Path:
        """Writes everything needed to continue bit for bit (weights, optimizer, corpus RNG) to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"recipe": dataclasses.asdict(self.recipe), "step": self.step, "losses": self.losses,
                    "seconds": self.seconds, "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "corpus_rng": self.stream.rng.bit_generator.state, "skipped": self.stream.skipped}, path)
        return path

    @classmethod
    def from_snapshot(cls, path: str | Path) -> SFTRun:
        """The run saved by :meth:`save_snapshot`, ready to continue.

        Raises:
            ValueError: If the file is not an SFT snapshot.
        """
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "recipe" not in state:
            raise ValueError(f"Expected an SFTRun snapshot written by save_snapshot, got {path}.")
        run = cls(Recipe(**state["recipe"]))
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.stream.rng.bit_generator.state = state["corpus_rng"]
        run.stream.skipped = state["skipped"]
        run.step, run.losses, run.seconds = state["step"], list(state["losses"]), float(state["seconds"])
        return run


def train_sft(recipe: Recipe, *, log_every: int = 50, log: Callable[[str], None] | None = print) -> tuple[Any, list[float]]:
    """Trains the testbed policy from scratch for ``recipe.steps``; returns ``(model, per-step losses)``.

    Nothing is written to disk (:func:`save_testbed` does that). Call ``torch.set_num_threads``
    first to bound the CPU use.
    """
    run = SFTRun(recipe).train(recipe.steps, log_every=log_every, log=log)
    return run.model, run.losses


# -- saving and loading ---------------------------------------------------------------------------------
def save_testbed(model: Any, recipe: Recipe, report: dict[str, Any], out_dir: str | Path) -> Path:
    """Writes fp16 safetensors, ``config.json`` and ``recipe.json`` (recipe + ``report``) to ``out_dir``."""
    import copy

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    half = copy.deepcopy(model).to(torch.float16)
    half.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)  # sampling is the env's business
    (out / "model.safetensors").chmod(0o644)  # safetensors writes 0600; package data must be readable
    meta = {"recipe": dataclasses.asdict(recipe), "codec": CharCodec().fingerprint(), **report}
    (out / "recipe.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


# -- measuring it -------------------------------------------------------------------------------------
def heldout_indices(count: int, level: int = 3, max_operand: int = 9) -> list[int]:
    """The trainer's held-out problem indices for ``eval_problems=count`` (the last ``count`` of the family)."""
    n = len(ArithmeticSource(level, seed=ENV_FAMILY_SEED, max_operand=max_operand))
    return list(range(n - count, n))


def _vector_env(num_envs: int, level: int, max_operand: int) -> Any:
    import gymnasium as gym

    import envs_registry  # noqa: F401  (registers the ids)

    return gym.make_vec("Arithmetic-v0", num_envs=num_envs, autoreset_mode="Disabled", copy=False,
                        level=level, max_operand=max_operand)


def evaluate_testbed(
    model: Any, indices: Sequence[int], *, level: int = 3, max_operand: int = 9, samples: int = 4, seed: int = 0
) -> dict[str, float]:
    """Greedy accuracy and sampled (T = 1) accuracy through :func:`~deepgrpo_agent.evaluation.evaluate_policy`."""
    from deepgrpo_agent.engine.hf import HFEngine
    from deepgrpo_agent.evaluation import evaluate_policy

    venv = _vector_env(len(indices) * max(samples, 1), level, max_operand)
    engine = HFEngine(model, vocab_size=CharCodec().vocab_size)
    with torch.no_grad():
        return evaluate_policy(venv, engine, indices, max_new_tokens=default_limits(level, max_operand)[1],
                               pass_k=samples, temperature=1.0, seed=seed)


FailureKind = str
"""``"slip"`` (right step, wrong result), ``"step"`` (wrong operation or operands), ``"answer"``
(the ``=`` line misstates the last value), ``"retraction"`` (a ``no`` line where none belonged),
``"other"`` (malformed, cut, or matching the reference but graded wrong)."""


def first_wrong_line(question: str, response: str) -> tuple[int, FailureKind]:
    """Where a response first departs from the reference solution: ``(character offset of that line, kind)``.

    The offset is the depth (in CharCodec tokens) of the state just before the first wrong line.
    """
    reference = solution_text(question).split("\n")
    lines = response.split("\n")
    offset = 0
    for k, line in enumerate(lines):
        expected = reference[k] if k < len(reference) else None
        if line != expected:
            if expected is None:
                return offset, "other"
            if line.startswith(RETRACT):
                return offset, "retraction"
            if expected.startswith("="):
                return offset, "answer" if line.startswith("=") else "other"
            lhs = expected.split("=")[0] + "="
            if line.startswith(lhs):
                return offset, "slip"
            return offset, "step"
        offset += len(line) + 1
    return max(len(response) - 1, 0), "other"


def slip_recoverability(
    model: Any,
    indices: Sequence[int],
    *,
    level: int = 3,
    max_operand: int = 9,
    branches: int = 8,
    seed: int = 0,
    chunk: int = 64,
) -> dict[str, Any]:
    """How recoverable the sampled failures are: resampling before the first wrong line vs from the root.

    Samples one T = 1 solution per problem; for each failed one, locates the first line that departs
    from the reference (:func:`first_wrong_line`) and samples ``branches`` continuations from the state
    just before it, ``branches`` fresh solutions from the root and, when that line is a slip,
    ``branches`` continuations from the state just after it.

    Returns:
        ``sample_accuracy``; ``failures`` and the fraction of each failure kind (``failure_slip``, ...);
        mean branch success ``pre_slip_success`` / ``root_success`` over the failed problems, and the
        fraction of them with at least one successful branch (``pre_slip_any`` / ``root_any``); the
        same two means over the ``deep_failures`` whose first wrong line is not the first line
        (``*_deep``); ``post_slip_success`` / ``post_slip_any`` from just after a slipped line (what
        is left is mostly a ``no ...`` retraction); ``mean_depth``, the relative position of the first
        wrong line, and ``depth_zero``, the fraction of failures whose first line was already wrong.
    """
    from deepgrpo_agent.engine.hf import HFEngine
    from deepgrpo_agent.engine.protocol import SamplingParams
    from deepgrpo_agent.rollout import branch_rollouts, collect_rollouts

    codec = CharCodec()
    params = SamplingParams(1.0, 1.0, default_limits(level, max_operand)[1])
    generator = torch.Generator().manual_seed(seed)
    venv = _vector_env(max(len(indices), chunk * branches), level, max_operand)
    engine = HFEngine(model, vocab_size=codec.vocab_size)
    source = ArithmeticSource(level, seed=ENV_FAMILY_SEED, max_operand=max_operand)

    def success(states: list[Any]) -> np.ndarray:  # per state, the fraction of branches that score
        out = [np.zeros(0)]
        for k in range(0, len(states), chunk):
            batch = branch_rollouts(venv, engine, states[k : k + chunk], branches, params, generator=generator)
            out.append(np.array([c is True for c in batch.correct], dtype=np.float64).reshape(-1, branches).mean(1))
        return np.concatenate(out)

    with torch.no_grad():
        roots = collect_rollouts(venv, engine, indices, 1, params, generator=generator)
        failed = [r for r in range(len(roots)) if roots.correct[r] is not True]
        kinds: dict[str, int] = {}
        pre_states, root_states, post_states, depths = [], [], [], []
        for r in failed:
            response = codec.decode(roots.new_ids[r].tolist())
            depth, kind = first_wrong_line(source.problem(int(roots.problem_index[r])).question, response)
            kinds[kind] = kinds.get(kind, 0) + 1
            depths.append(depth / max(len(roots.new_ids[r]), 1))
            pre_states.append(roots.prefix_state(r, depth))
            root_states.append(roots.prefix_state(r, 0))
            line_end = response.find("\n", depth)
            if kind == "slip" and line_end >= 0:
                post_states.append(roots.prefix_state(r, line_end + 1))
        pre, root, post = success(pre_states), success(root_states), success(post_states)
    deep = np.array(depths) > 0  # failures whose pre-slip state is not the root
    return {
        "problems": len(indices),
        "sample_accuracy": 1 - len(failed) / len(indices),
        "failures": len(failed),
        **{f"failure_{k}": v / max(len(failed), 1) for k, v in sorted(kinds.items())},
        "pre_slip_success": _mean(pre),
        "root_success": _mean(root),
        "pre_slip_any": _mean(pre > 0),
        "root_any": _mean(root > 0),
        "deep_failures": int(deep.sum()),
        "pre_slip_success_deep": _mean(pre[deep]),
        "root_success_deep": _mean(root[deep]),
        "post_slip_states": len(post_states),
        "post_slip_success": _mean(post),
        "post_slip_any": _mean(post > 0),
        "mean_depth": _mean(np.array(depths)),
        "depth_zero": _mean(~deep),
        "branches": branches,
    }


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else float("nan")


__all__ = [
    "ENV_FAMILY_SEED",
    "HELDOUT_GUARD",
    "TESTBED",
    "TESTBED_DIR",
    "TESTBED_ENV_KWARGS",
    "TESTBED_MAX_NEW_TOKENS",
    "CorpusStream",
    "Recipe",
    "SFTBatch",
    "SFTRun",
    "SlippedSolution",
    "check_vocab",
    "collate",
    "encode_example",
    "evaluate_testbed",
    "first_wrong_line",
    "heldout_expressions",
    "heldout_indices",
    "load_testbed",
    "model_config",
    "save_testbed",
    "shipped_recipe",
    "slip_rate",
    "slip_recoverability",
    "slipped_solution",
    "train_sft",
]
