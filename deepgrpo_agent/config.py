"""Run configurations (one documented, validated dataclass per algorithm) and their dict helpers.

Each field is documented exactly once, by the string literal right under it; :func:`field_docs`
reads those strings back (the command line of :mod:`deepgrpo_agent.config_cli` uses them as
``--help``). Enumerations are ``Literal`` types. ``__post_init__`` checks types (converting ints to
floats and lists to tuples where a field asks for it) and then values, raising ``ValueError`` with
what was expected, what was given and how to fix it.

A config for another algorithm subclasses :class:`GRPOConfig` with only its own fields and calls
``super().__post_init__()`` first::

    @dataclass(kw_only=True)
    class DeepGRPOConfig(GRPOConfig):
        branches: int = 8
        \"\"\"Continuations sampled from each pivot (K).\"\"\"

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.branches < 2: ...
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import math
import os
import re
import textwrap
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")

AdvantageScale = Literal["group", "batch", "none"]
"""Advantage scaling after mean-centring (the same names as :mod:`deepgrpo_agent.advantages`)."""
LossAggregation = Literal["token-mean", "sequence-mean", "dr-grpo"]
"""Loss aggregations (the keys of :data:`deepgrpo_agent.losses.AGGREGATIONS`)."""
DynamicSampling = Literal["off", "drop", "refill"]
"""What to do with zero-variance groups."""
DType = Literal["auto", "float32", "bfloat16", "float16"]
"""Compute dtypes (bfloat16 = mixed precision with fp32 master weights)."""
EngineName = Literal["hf", "vllm"]
"""Generation backends (the keys of :data:`deepgrpo_agent.engine.ENGINES`)."""
EvalSplit = Literal["test", "validation"]
"""Held-out slices: the test problems, or the validation problems just before them."""

# -- reading the dataclasses ---------------------------------------------------------------------------


def _config_classes(cls: type) -> list[type]:
    """Dataclasses in ``cls``'s MRO, base first."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"Expected a dataclass type, got {cls!r}.")
    return [k for k in reversed(cls.__mro__) if dataclasses.is_dataclass(k)]


@functools.cache
def _own_field_docs(klass: type) -> dict[str, str]:
    """Docstrings of the fields ``klass`` itself declares (read from its source)."""
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):  # defined in a REPL or generated: no source to read
        return {}
    tree = ast.parse(source)
    node = next((n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == klass.__name__), None)
    if node is None:
        return {}
    docs: dict[str, str] = {}
    for stmt, after in zip(node.body, node.body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it), base-class fields first.

    A subclass's docstring for a field wins over its parent's. A field without a docstring maps to
    ``""``.

    Args:
        cls: A dataclass type, e.g. :class:`GRPOConfig`.

    Returns:
        ``{field name: docstring}`` in field order.
    """
    docs: dict[str, str] = {}
    for klass in _config_classes(cls):
        docs.update(_own_field_docs(klass))
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def field_types(cls: type) -> dict[str, Any]:
    """Each field's resolved type annotation (``Literal``, ``X | None``, ``tuple[...]``, ...)."""
    if cls not in _FIELD_TYPES:  # resolving string annotations is slow; every __post_init__ asks
        _config_classes(cls)
        hints = get_type_hints(cls)
        _FIELD_TYPES[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _FIELD_TYPES[cls]


def own_fields(cls: type) -> dict[type, list[str]]:
    """Field names grouped by the class in ``cls``'s MRO that declares them, base first."""
    declared: dict[type, list[str]] = {}
    seen: set[str] = set()
    names = [f.name for f in dataclasses.fields(cls)]
    for klass in _config_classes(cls):
        own = [n for n in names if n in inspect.get_annotations(klass) and n not in seen]
        seen.update(own)
        if own:
            declared[klass] = own
    return declared


# -- type coercion -------------------------------------------------------------------------------------


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def describe_type(tp: Any) -> str:
    """A short human description of a field type, for error messages and ``--help``."""
    origin, args = get_origin(tp), get_args(tp)
    if _is_union(tp):
        return " or ".join("None" if a is type(None) else describe_type(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe_type(args[0])}"
        return f"a list of {len(args)} values ({', '.join(describe_type(a) for a in args)})"
    if origin is list:
        return f"a list of {describe_type(args[0]) if args else 'values'}"
    if origin is dict or tp is dict:
        return "a mapping (a JSON object on the command line)"
    names = {bool: "true or false", int: "an int", float: "a float", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _type_error(name: str, tp: Any, value: Any, hint: str = "") -> ValueError:
    return ValueError(
        f"Expected `{name}` to be {describe_type(tp)}, got {value!r} ({type(value).__name__}){hint}."
    )


def _parse_number(value: Any, tp: type, name: str, parse_text: bool) -> Any:
    if isinstance(value, bool):
        raise _type_error(name, tp, value)
    if parse_text and isinstance(value, str):
        try:
            value = (
                float(value) if tp is float or not re.fullmatch(r"[+-]?\d+", value.strip()) else int(value)
            )
        except ValueError:
            raise _type_error(name, tp, value) from None
    if tp is float and isinstance(value, int | float):
        return float(value)
    if tp is int and isinstance(value, int):
        return value
    if tp is int and parse_text and isinstance(value, float) and value.is_integer():
        return int(value)  # YAML reads `1e3` as a string, then float("1e3") = 1000.0
    raise _type_error(name, tp, value)


def _coerce_sequence(value: Any, tp: Any, name: str, parse_text: bool) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if not isinstance(value, list | tuple):
        raise _type_error(name, tp, value)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise _type_error(name, tp, value, f": {len(value)} values instead of {len(args)}")
        return tuple(coerce_value(v, a, name=name, parse_text=parse_text) for v, a in zip(value, args))
    element = args[0] if args else Any
    items = [coerce_value(v, element, name=name, parse_text=parse_text) for v in value]
    return tuple(items) if origin is tuple else items


def coerce_value(value: Any, tp: Any, *, name: str, parse_text: bool = False) -> Any:
    """Checks ``value`` against the field type ``tp``, converting where the conversion is lossless.

    Always: int -> float, list -> tuple, ``os.PathLike`` -> str, mappings -> a new ``dict``.
    With ``parse_text`` (values from YAML or the command line) strings are also parsed as numbers
    (YAML 1.1 reads ``1e-6`` as a string), booleans and JSON objects.

    Args:
        value: The value to check.
        tp: The field's resolved annotation.
        name: The field name, for the error message.
        parse_text: Whether strings may be parsed into non-string types.

    Returns:
        The value, converted.

    Raises:
        ValueError: If the value does not fit the type.
    """
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if _is_union(tp):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce_value(value, option, name=name, parse_text=parse_text)
            except ValueError:
                continue
        raise _type_error(name, tp, value)
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return choice
            if parse_text and isinstance(value, str) and value == str(choice):
                return choice
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        raise _type_error(name, tp, value, f"; did you mean {close[0]!r}?" if close else "")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if parse_text and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise _type_error(name, tp, value)
    if tp in (int, float):
        return _parse_number(value, tp, name, parse_text)
    if tp is str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, str):
            return value
        raise _type_error(name, tp, value, "; quote it in YAML")
    if origin in (tuple, list):
        return _coerce_sequence(value, tp, name, parse_text)
    if origin is dict or tp is dict:
        if parse_text and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise _type_error(name, tp, value, f"; it is not valid JSON ({e})") from e
        if not isinstance(value, Mapping):
            raise _type_error(name, tp, value)
        return dict(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _type_error(name, tp, value)
    return value


def check_types(cfg: Any) -> None:
    """Checks (and losslessly converts, in place) every field of the dataclass instance ``cfg``."""
    for name, tp in field_types(type(cfg)).items():
        old = getattr(cfg, name)
        new = coerce_value(old, tp, name=name)
        if new is not old:
            object.__setattr__(cfg, name, new)  # works for frozen subclasses too


# -- dicts ---------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain values, field order kept: tuples become lists, mappings new dicts.

    Objects inside ``env_kwargs`` (a tokenizer, a verifier) are kept as they are, not copied.
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"Expected a config dataclass instance, got {cfg!r}.")
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def unknown_fields_error(cls: type, keys: list[str], where: str = "") -> ValueError:
    """A ``ValueError`` naming unknown config keys, with the closest field names as suggestions."""
    names = list(field_types(cls))
    parts = []
    for key in keys:
        close = difflib.get_close_matches(key.replace("-", "_"), names, n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        parts.append(f"{cls.__name__} has no field {key!r}{where}.{hint}")
    return ValueError(" ".join(parts) + " (`--help` lists every field.)")


def from_dict(cls: type[T], values: Mapping[str, Any], *, where: str = "") -> T:
    """Builds ``cls`` from a mapping of field values, e.g. one loaded from YAML.

    Values are converted as :func:`coerce_value` does with ``parse_text=True`` (YAML strings like
    ``1e-6`` become floats, lists become tuples); missing fields keep their defaults.

    Args:
        cls: The config dataclass.
        values: ``{field name: value}``.
        where: Where the values came from (e.g. `` in run.yaml``), for error messages.

    Returns:
        The validated config.

    Raises:
        ValueError: For unknown keys (suggesting close field names), ill-typed or invalid values.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"Expected a mapping of {cls.__name__} fields{where}, got {type(values).__name__}.")
    types_ = field_types(cls)
    unknown = [str(k) for k in values if k not in types_]
    if unknown:
        raise unknown_fields_error(cls, unknown, where)
    kwargs = {k: coerce_value(v, types_[k], name=k, parse_text=True) for k, v in values.items()}
    return cls(**kwargs)


# -- the GRPO config -----------------------------------------------------------------------------------


_DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


@dataclass(kw_only=True)
class GRPOConfig:
    """Configuration of a GRPO run (docs/methods.md §1).

    Every field is also a command-line flag of ``deepgrpo train`` (``group_size`` -> ``--group-size``)
    and a key of the YAML file given with ``--config``. The defaults are the DEEP-GRPO paper's GRPO
    baseline (mean-centred advantages without std division, token-mean loss, one optimizer step per
    batch, AdamW at 1e-6) at a size that runs on a CPU. Only construction validates: change a field with
    ``dataclasses.replace(cfg, field=value)`` to get a checked copy.
    """

    # -- environment and model
    env_id: str = "MathReasoning-SVAMP-v0"
    """Registered environment id to train on (`deepgrpo envs` lists them)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the environment, e.g. {"prompt": "plain"} (JSON on the command line)."""
    eval_env_id: str | None = None
    """Environment id for held-out evaluation; None = the held-out split of `env_id`'s dataset family."""
    model: str = "default"
    """Policy to train: "default" (the embedded SmolLM2-135M-Instruct), "arithmetic-testbed" (the shipped tiny Llama pre-trained on Arithmetic-v0 level 3, for fast CPU comparisons: deepgrpo_agent.testbed), a local transformers checkpoint directory, or "random-tiny" (a random-init 2-layer Llama sized to the env's action space, for Arithmetic-v0 and smoke runs)."""
    device: str = "auto"
    """Torch device: "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N"."""
    dtype: DType = "auto"
    """Compute dtype; "auto" is bfloat16 on CUDA and on CPUs with native bf16 (avx512_bf16/amx_bf16 flags) for models of >= 10M parameters, else float32. bfloat16 is mixed precision: fp32 master weights and AdamW state, bf16 autocast in the update, a bf16 copy of the weights for rollouts (docs/precision.md)."""
    seed: int = 0
    """Seed of every random choice of the run (problem order, sampling, initialisation)."""
    env_wrappers: list[Any] = field(default_factory=list)
    """Vector-env wrappers applied, in order, to every env of the run (root, branch and evaluation): each an import path "module:Class" or {"class": "module:Class", "kwargs": {...}}, e.g. "deepgrpo_env.vector_wrappers:FormatReward"."""

    # -- rollouts
    prompts_per_step: int = 4
    """Prompts (groups) sampled per training step."""
    train_problems: int = 0
    """Train on a fixed random subset of this many problems of the train split only (drawn with env_pool.SPLIT_SEED; a finite pool revisited in epochs, as ERPO's per-prompt history needs); 0 = the whole split."""
    group_size: int = 8
    """Responses sampled per prompt (G); each response's advantage is relative to its group."""
    max_new_tokens: int = 256
    """Token budget of one response; responses that reach it are truncated."""
    temperature: float = 1.0
    """Sampling temperature of the training rollouts; the loss's log-probs use the same temperature."""
    top_p: float = 1.0
    """Nucleus-sampling threshold of the training rollouts (1.0 = off)."""
    rollout_workers: int = 0
    """Ray actors that collect the rollouts (roots and branches) in parallel, each with its own engine and env; 0 = collect in this process (needs `pip install 'deepgrpo[ray]'` when > 0, see docs/ray.md)."""
    rollout_worker_gpus: float = 0.0
    """GPUs each rollout worker asks Ray for (0.5 = two workers per GPU); > 0 puts its engine on CUDA."""
    ray_address: str | None = None
    """Ray cluster of the rollout workers: None starts one on this machine, "auto" joins the running one, "ray://HOST:10001" a remote one."""
    engine: EngineName = "hf"
    """Generation backend of every rollout and evaluation: "hf" (transformers, always installed) or "vllm" (vLLM in this process, on the CPU or CUDA; install with `bash scripts/setup.sh --vllm`, see docs/vllm.md)."""
    vllm_kv_cache_gb: float = 2.0
    """engine="vllm": KV-cache memory in GiB (0 on CUDA = size it by `vllm_gpu_memory_utilization` instead)."""
    vllm_gpu_memory_utilization: float = 0.3
    """engine="vllm" on CUDA: fraction of the GPU vLLM may take (the trained model and its optimizer share the GPU)."""

    # -- optimisation
    total_steps: int = 50
    """Training steps (each: collect rollouts, compute advantages, update)."""
    max_generated_tokens: int | None = None
    """Generated-token budget (roots + branches, docs/methods.md §5): training stops after the step that reaches it, or at `total_steps`, whichever comes first; None = steps only."""
    learning_rate: float = 1e-6
    """AdamW learning rate (the paper's runs: 1e-6)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.99)
    """AdamW (beta1, beta2)."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global L2 norm before each optimizer step."""
    warmup_steps: int = 0
    """Optimizer steps of linear learning-rate warm-up (0 = constant rate)."""
    ppo_epochs: int = 1
    """Optimizer steps on each batch of rollouts (μ); 1 = the paper's on-policy setting (ratio = 1)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass; gradients accumulate to exactly the full-batch gradient."""
    skip_zero_advantage_rows: bool = True
    """Skip the forward/backward pass of rows whose advantage is exactly 0 (the update is the same; off only to measure the work of an update that computes them, as TRL does)."""
    share_prefix: bool = True
    """Compute a context shared by several rows (a group's prompt, a pivot's prefix) once per micro-batch and train the rows' responses against its cache (same gradient up to rounding; docs/performance.md)."""
    drop_zero_advantage_roots: bool = False
    """Drop samples with |A| < 1e-8 before the update, so that their tokens leave the token-mean denominator too (the DEEP-GRPO paper code's GRPO); False keeps them in the denominator (they carry no gradient)."""

    # -- loss
    clip_eps_low: float = 0.2
    """Lower clip range ε_low: the ratio is clipped below at 1 - ε_low (for negative advantages)."""
    clip_eps_high: float = 0.2
    """Upper clip range ε_high: the ratio is clipped above at 1 + ε_high (DAPO's clip-higher: 0.28)."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 capping the loss of negative-advantage tokens at c·|A| (e.g. 3.0); None = off."""
    advantage_scale: AdvantageScale = "none"
    """Scaling of mean-centred group advantages: "none" (Dr.GRPO, the paper's baseline), "group" (divide by the group's std, original GRPO) or "batch" (by the batch's std)."""
    loss_aggregation: LossAggregation = "token-mean"
    """Reduction of token losses: "token-mean" (DAPO), "sequence-mean" (original GRPO) or "dr-grpo" (sum / (sequences × max_new_tokens))."""
    kl_coef: float = 0.0
    """Coefficient β of the k3 KL penalty to the frozen initial policy (the paper's runs: 1e-4); 0 = no reference model."""
    truncated_roots_fail: bool = False
    """Score root rollouts that hit the response budget as 0 (the DEEP-GRPO paper scores every truncated sample 0); False grades them like finished ones."""
    dynamic_sampling: DynamicSampling = "off"
    """Groups whose rewards are all equal: "off" keeps them (advantage 0), "drop" removes them, "refill" removes them and samples more prompts (DAPO)."""
    max_refill_rounds: int = 4
    """With dynamic_sampling="refill": extra sampling rounds per step at most, before training on what was kept."""

    # -- evaluation
    eval_every: int = 10
    """Evaluate on held-out problems before training, every this many steps and after the last; 0 = never."""
    eval_every_tokens: int = 0
    """Also evaluate each time the generated-token count crosses a multiple of this (equal-budget curves); 0 = off."""
    eval_problems: int = 64
    """Held-out problems per evaluation: a fixed random subset of the training env's problems (env_pool.SPLIT_SEED, independent of `seed`), never trained on; the first this many of a separate eval env."""
    eval_split: EvalSplit = "test"
    """Which held-out slice evaluation uses: "test" (the fixed random held-out subset) or "validation" (another `eval_problems` problems of the same seeded permutation, also kept out of training; for choosing hyperparameters such as the learning rate without looking at the test slice)."""
    eval_max_new_tokens: int | None = None
    """Token budget of evaluation responses; None = `max_new_tokens`."""
    pass_k: int = 4
    """Samples per problem (at `temperature`) for the pass@k metric; 0 = greedy accuracy only."""

    # -- logging and checkpoints
    log_every: int = 1
    """Write metrics every this many steps."""
    save_every: int = 10
    """Save a checkpoint every this many steps and after the last; 0 = after the last only."""
    output_dir: str = "runs/grpo"
    """Directory for metrics, TensorBoard logs and checkpoints."""
    run_name: str | None = None
    """Run name shown by experiment trackers; None = chosen by the tracker."""
    tensorboard: bool = True
    """Write TensorBoard logs under `output_dir`/tensorboard."""
    wandb: bool = False
    """Log to Weights & Biases (needs the wandb package and a login)."""
    progress: bool = True
    """Show a progress bar."""
    resume: bool = False
    """Continue from the latest complete checkpoint in `output_dir` (starts fresh when there is none)."""

    def __post_init__(self) -> None:
        check_types(self)
        for holds, name, expected, fix in self._value_checks():
            if not holds:
                raise ValueError(f"Expected `{name}` {expected}, got {getattr(self, name)!r}. {fix}")

    def _value_checks(self) -> list[tuple[bool, str, str, str]]:
        """``(holds, field, expected, how to fix)`` for every constraint on values, in field order."""
        return self._rollout_checks() + self._optimisation_checks() + self._run_checks()

    def _rollout_checks(self) -> list[tuple[bool, str, str, str]]:
        return [
            (bool(self.env_id), "env_id", "to be a registered env id", "`deepgrpo envs` lists them."),
            (bool(self.model), "model", 'to be "default" or a checkpoint directory', 'Use "default".'),
            (
                _DEVICE.fullmatch(self.device) is not None,
                "device",
                'like "auto", "cpu", "cuda" or "cuda:N"',
                'Use "auto" to pick CUDA when it is available.',
            ),
            (self.seed >= 0, "seed", ">= 0", "NumPy's generators reject negative seeds."),
            (bool(self.engine), "engine", 'to name an engine', 'Use "hf".'),
            (self.prompts_per_step >= 1, "prompts_per_step", ">= 1", "A step needs a prompt to sample for."),
            (self.train_problems >= 0, "train_problems", ">= 0", "Use 0 to train on the whole train split."),
            (
                self.group_size >= 2,
                "group_size",
                ">= 2",
                "Advantages compare responses within a group, so a group of one carries no signal; "
                "the paper uses 8.",
            ),
            (self.max_new_tokens >= 1, "max_new_tokens", ">= 1", "The paper uses 1024."),
            (
                0.0 < self.temperature < math.inf,
                "temperature",
                "> 0 and finite",
                "Sampling divides the logits by it; use 1.0 (the paper) or e.g. 0.1 for near-greedy.",
            ),
            (0.0 < self.top_p <= 1.0, "top_p", "in (0, 1]", "Use 1.0 to turn nucleus sampling off."),
            (self.rollout_workers >= 0, "rollout_workers", ">= 0", "Use 0 to collect in this process."),
            (
                self.rollout_workers == 0 or self.engine == "hf",
                "rollout_workers",
                f"0 with engine={self.engine!r} (Ray rollout workers run the 'hf' engine only)",
                "Use engine='hf' with rollout_workers, or rollout_workers=0 with vLLM (it batches in-process).",
            ),
            (self.rollout_worker_gpus >= 0.0, "rollout_worker_gpus", ">= 0", "Use 0 for CPU workers."),
            (self.vllm_kv_cache_gb >= 0.0, "vllm_kv_cache_gb", ">= 0", "Use e.g. 2 (GiB)."),
            (
                0.0 < self.vllm_gpu_memory_utilization <= 1.0,
                "vllm_gpu_memory_utilization",
                "in (0, 1]",
                "Use e.g. 0.3: the training model needs the rest of the GPU.",
            ),
        ]

    def _optimisation_checks(self) -> list[tuple[bool, str, str, str]]:
        eps_fix = "The usual value is 0.2 (DAPO: 0.2 low, 0.28 high)."
        return [
            (self.total_steps >= 1, "total_steps", ">= 1", "Train for at least one step."),
            (self.max_generated_tokens is None or self.max_generated_tokens >= 1, "max_generated_tokens",
             ">= 1 or None", "Use None for no token budget."),
            (self.eval_every_tokens >= 0, "eval_every_tokens", ">= 0", "Use 0 to turn it off."),
            (
                0.0 <= self.learning_rate < math.inf,
                "learning_rate",
                ">= 0 and finite",
                "The paper uses 1e-6.",
            ),
            (self.weight_decay >= 0.0, "weight_decay", ">= 0", "The paper uses 0.01."),
            (all(0.0 <= b < 1.0 for b in self.adam_betas), "adam_betas", "in [0, 1)", "Use (0.9, 0.99)."),
            (
                self.max_grad_norm > 0.0,
                "max_grad_norm",
                "> 0",
                "The paper uses 1.0; a huge value such as 1e9 effectively turns clipping off.",
            ),
            (self.warmup_steps >= 0, "warmup_steps", ">= 0", "Use 0 for no warm-up."),
            (
                self.ppo_epochs >= 1,
                "ppo_epochs",
                ">= 1",
                "A batch needs one optimizer step; the paper uses 1.",
            ),
            (
                self.micro_batch_size >= 1,
                "micro_batch_size",
                ">= 1",
                "It counts sequences per forward pass; lower it when memory runs out.",
            ),
            (0.0 <= self.clip_eps_low < 1.0, "clip_eps_low", "in [0, 1)", eps_fix),
            (0.0 <= self.clip_eps_high < 1.0, "clip_eps_high", "in [0, 1)", eps_fix),
            (
                self.dual_clip is None or self.dual_clip > 1.0,
                "dual_clip",
                "> 1 or None",
                "The cap c·|A| must lie above the clipped loss; use 3.0, or None to turn it off.",
            ),
            (self.kl_coef >= 0.0, "kl_coef", ">= 0", "Use 0 for no penalty or 1e-4 (the paper)."),
            (
                self.max_refill_rounds >= 0,
                "max_refill_rounds",
                ">= 0",
                "Use 0 to never sample extra prompts.",
            ),
        ]

    def _run_checks(self) -> list[tuple[bool, str, str, str]]:
        return [
            (self.eval_every >= 0, "eval_every", ">= 0", "Use 0 to never evaluate."),
            (
                self.eval_problems >= (1 if self.eval_every > 0 else 0),
                "eval_problems",
                ">= 1 when evaluating (`eval_every` > 0)",
                "Use e.g. 64, or eval_every=0 to turn evaluation off.",
            ),
            (
                self.eval_max_new_tokens is None or self.eval_max_new_tokens >= 1,
                "eval_max_new_tokens",
                ">= 1 or None",
                "Use None to reuse `max_new_tokens`.",
            ),
            (self.pass_k >= 0, "pass_k", ">= 0", "Use 0 to report greedy accuracy only."),
            (self.log_every >= 1, "log_every", ">= 1", "Use 1 to log every step."),
            (self.save_every >= 0, "save_every", ">= 0", "Use 0 to save only after the last step."),
            (bool(self.output_dir), "output_dir", "to be a directory path", 'Use e.g. "runs/grpo".'),
            (
                self.run_name is None or bool(self.run_name),
                "run_name",
                "to be None or non-empty",
                "Leave it unset to let the tracker choose.",
            ),
        ]
