"""ReasoningEnv: reasoning as a token-level Gymnasium environment with exact snapshot/reset_to."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from deepgrpo_env.codec import Codec, as_codec
from deepgrpo_env.core import EpisodeCore, EpisodeLimits
from deepgrpo_env.grading import Grade, Grader, is_correct
from deepgrpo_env.problems import Problem
from deepgrpo_env.prompts import PromptTemplate
from deepgrpo_env.sources import DatasetSource, ProblemSource
from deepgrpo_env.state import EnvState
from deepgrpo_env.verifiers import Verifier, verifier_for

ProblemsArg = str | ProblemSource | Sequence[Problem] | Sequence[dict[str, Any]]
VerifierArg = Verifier | Callable[[str, str], float | None] | str | None


def resolve_source(problems: ProblemsArg) -> tuple[ProblemSource, str]:
    """Turns the ``problems`` argument into a source and its answer kind (``"numeric"`` or ``"math"``).

    Accepts a dataset name (``"gsm8k"``, ``"gsm8k:train"``, ``"mawps:test:singleop"``), a JSONL path, a list of problems or
    dicts, or any :class:`ProblemSource`.
    """
    from deepgrpo_env import datasets

    if isinstance(problems, ProblemSource) and not isinstance(problems, (str, list, tuple)):
        return problems, getattr(problems, "answer_kind", "math")
    if isinstance(problems, str):
        name, _, rest = problems.partition(":")
        split, _, subset = rest.partition(":")
        if name in datasets.DATASETS:
            info = datasets.DATASETS[name]
            split = split or ("train" if "train" in info.splits else info.splits[0])
            label = f"{name}:{split}:{subset}" if subset else f"{name}:{split}"
            return (
                DatasetSource(datasets.load_dataset(name, split, subset=subset or None), label),
                info.answer_kind,
            )
    loaded = datasets.as_problems(problems)
    return DatasetSource(loaded, str(problems) if isinstance(problems, str) else "custom"), "math"


def resolve_codec(tokenizer: Any, **kwargs: Any) -> Codec:
    """``tokenizer`` as a codec; ``None`` means the embedded default model's tokenizer."""
    if tokenizer is None:
        from deepgrpo_env.default_model import default_tokenizer

        tokenizer = default_tokenizer()
    return as_codec(tokenizer, **kwargs)


def resolve_verifier(verifier: VerifierArg, answer_kind: str) -> Verifier | None:
    """``"auto"`` picks the dataset's verifier (numeric or math); ``None`` disables grading."""
    if verifier == "auto":
        verifier = answer_kind
    if isinstance(verifier, str):
        if verifier == "numeric":
            return verifier_for("numeric")
        if verifier == "math":
            return verifier_for("math")
        raise ValueError(
            f"Expected `verifier` to be a callable, 'auto', 'numeric', 'math' or None, got {verifier!r}."
        )
    if verifier is not None and not callable(verifier):
        raise TypeError(
            f"Expected `verifier` to be callable (response, reference) -> float | None, "
            f"got {type(verifier).__name__}."
        )
    return verifier


@dataclass(frozen=True)
class EnvParts:
    """What the single and the vector env are built from (one place for both)."""

    core: EpisodeCore
    verifier: Verifier | None
    grader: Grader | None


def build_parts(
    num_rows: int,
    problems: ProblemsArg,
    *,
    tokenizer: Any,
    verifier: VerifierArg,
    prompt: PromptTemplate | str,
    max_prompt_tokens: int,
    max_response_tokens: int,
    grade_timeout: float,
    grade_workers: int = 1,
    stop_token_ids: Sequence[int] | None = None,
    vocab_size: int | None = None,
) -> EnvParts:
    """Resolves the constructor arguments shared by :class:`ReasoningEnv` and the vector env."""
    source, kind = resolve_source(problems)
    codec_kwargs: dict[str, Any] = {}
    if stop_token_ids is not None:
        codec_kwargs["stop_token_ids"] = stop_token_ids
    if vocab_size is not None:
        codec_kwargs["vocab_size"] = vocab_size
    codec = resolve_codec(tokenizer, **codec_kwargs)
    template = prompt if isinstance(prompt, PromptTemplate) else PromptTemplate(style=prompt)  # type: ignore[arg-type]
    core = EpisodeCore(num_rows, codec, source, template, EpisodeLimits(max_prompt_tokens, max_response_tokens))
    resolved = resolve_verifier(verifier, kind)
    grader = (
        Grader(resolved, timeout=grade_timeout, num_workers=grade_workers) if resolved is not None else None
    )
    return EnvParts(core, resolved, grader)


def observation_space(vocab_size: int, limits: EpisodeLimits) -> spaces.Dict:
    """The fixed-shape observation space shared by the single and the vector env."""
    width = limits.max_total_tokens
    return spaces.Dict(
        {
            "input_ids": spaces.Box(0, vocab_size - 1, shape=(width,), dtype=np.int64),
            "length": spaces.Box(0, width, shape=(1,), dtype=np.int64),
            "prompt_length": spaces.Box(0, limits.max_prompt_tokens, shape=(1,), dtype=np.int64),
        }
    )


def grade_info(grade: Grade | None, response: str, reference: str) -> dict[str, Any]:
    """The episode-end info keys (see the env docstring) for one graded response."""
    if grade is None:
        score, status = None, "ungraded"
    else:
        score, status = grade.score, grade.status
    return {
        "response": response,
        "reference": reference,
        "score": score,
        "correct": is_correct(score),
        "grade_status": status,
    }


class ReasoningEnv(gym.Env[dict[str, np.ndarray], int]):
    """Token-level reasoning: the agent writes a response one token at a time.

    ## Description
    Each episode is one problem. The observation holds the prompt (the question in the tokenizer's
    chat template, followed by an answer instruction) and the response written so far. The state can
    be captured at any depth with :meth:`snapshot` and restored exactly with :meth:`reset_to`.

    ## Action Space
    ``Discrete(vocab_size)``: the id of the next response token.

    ## Observation Space
    ``Dict`` of fixed-shape int64 arrays, ``W = max_prompt_tokens + max_response_tokens``:
    ``input_ids`` (W,) prompt ids then response ids then padding (``pad_token_id``);
    ``length`` (1,) number of valid ids; ``prompt_length`` (1,) where the response starts.

    ## Rewards
    0 on every step but the last. On the last step: the verifier's score of the decoded response
    against the reference answer (0.0 when the verifier returns None or times out; ``info`` says so).

    ## Starting State
    A problem drawn uniformly with the env's generator (``reset(seed=...)``), or the one chosen with
    ``reset(options={"problem_index": i})``; the response is empty.

    ## Episode End
    ``terminated`` when a stop token (EOS / end of turn) is emitted; ``truncated`` when the response
    reaches ``max_response_tokens``. The final ``info`` holds ``response``, ``reference``,
    ``response_ids``, ``problem_id``, ``score`` (float or None), ``correct`` (bool or None),
    ``grade_status`` (``ok``/``unscorable``/``timeout``/``ungraded``). Stepping after the end raises.

    ## Arguments
    - ``problems``: dataset name (``"gsm8k:train"``), JSONL path, list of problems/dicts or a source.
    - ``tokenizer``: a transformers tokenizer or a :class:`~deepgrpo_env.codec.Codec`; default: the
      embedded default model's tokenizer.
    - ``verifier``: ``"auto"`` (the dataset's), ``"numeric"``, ``"math"``, a callable, or None.
    - ``prompt``: a :class:`PromptTemplate` or a style name (``"boxed"``, ``"gsm8k-hash"``, ``"plain"``, ``"brief"``).
    - ``max_prompt_tokens``, ``max_response_tokens``: observation sizes and the response budget.
    - ``grade_timeout``: hard per-answer grading timeout in seconds.
    - ``render_mode``: ``"ansi"`` (render() returns the text) or ``"human"`` (prints it).

    ## Version History
    - v0: initial version.
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 4}

    def __init__(
        self,
        problems: ProblemsArg = "gsm8k:train",
        *,
        tokenizer: Any = None,
        verifier: VerifierArg = "auto",
        prompt: PromptTemplate | str = "boxed",
        max_prompt_tokens: int = 512,
        max_response_tokens: int = 512,
        grade_timeout: float = 5.0,
        stop_token_ids: Sequence[int] | None = None,
        vocab_size: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"Expected render_mode in {self.metadata['render_modes']} or None, got {render_mode!r}."
            )
        self.render_mode = render_mode
        parts = build_parts(
            1, problems, tokenizer=tokenizer, verifier=verifier, prompt=prompt,
            max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens,
            grade_timeout=grade_timeout, stop_token_ids=stop_token_ids, vocab_size=vocab_size,
        )
        self.core, self.verifier, self.grader = parts.core, parts.verifier, parts.grader
        self.codec, self.limits = self.core.codec, self.core.limits
        self.action_space: spaces.Space[Any] = spaces.Discrete(self.codec.vocab_size)
        self.observation_space: spaces.Space[Any] = observation_space(self.codec.vocab_size, self.limits)

    @property
    def source(self) -> ProblemSource:
        """Where the problems come from."""
        return self.core.source

    @property
    def fingerprint(self) -> str:
        """Identity of this env's configuration; states only restore into equal fingerprints."""
        return self.core.fingerprint

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        self.core.rngs[0] = self.np_random
        options = options or {}
        unknown = set(options) - {"problem_index"}
        if unknown:
            raise ValueError(f"Unknown reset option(s) {sorted(unknown)}; expected 'problem_index'.")
        self.core.begin(0, options.get("problem_index"))
        return self.core.observation_row(0), self._start_info()

    def _start_info(self) -> dict[str, Any]:
        problem = self.core.problems[0]
        assert problem is not None
        return {
            "problem_id": problem.id,
            "problem_index": int(self.core.problem_index[0]),
            "question": problem.question,
            "reference": problem.reference,
            "prompt_length": int(self.core.prompt_len[0]),
            "depth": int(self.core.resp_len[0]),
        }

    def step(self, action: int) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        core = self.core
        if not core.started[0]:
            raise RuntimeError("Cannot call step() before reset(); call env.reset() first.")
        if core.terminated[0] or core.truncated[0]:
            raise RuntimeError(
                "Cannot call step() after the episode ended (terminated or truncated); "
                "call env.reset() or env.reset_to(state)."
            )
        if isinstance(action, np.ndarray) and action.shape == () and np.issubdtype(action.dtype, np.integer):
            action = action.item()
        if (
            not isinstance(action, (int, np.integer))
            or isinstance(action, (bool, np.bool_))
            or not 0 <= action < core.vocab_size
        ):
            raise ValueError(
                f"Expected an action (int token id) in [0, {core.vocab_size}), got {action!r} "
                f"({type(action).__name__}); bools and floats are refused, pass int(token_id)."
            )
        core.push_one(0, int(action))
        terminated, truncated = bool(core.terminated[0]), bool(core.truncated[0])
        reward, info = 0.0, {}
        if terminated or truncated:
            info = self._final_info()
            reward = info["score"] or 0.0
        return core.observation_row(0), reward, terminated, truncated, info

    def _final_info(self) -> dict[str, Any]:
        problem = self.core.problems[0]
        assert problem is not None
        ids = self.core.response_ids(0)
        text = self.codec.decode(ids.tolist())
        grade = self.grader.grade(text, problem.reference) if self.grader is not None else None
        info = grade_info(grade, text, problem.reference)
        info.update(response_ids=ids, problem_id=problem.id)
        return info

    def snapshot(self) -> EnvState:
        """The current state as an immutable, picklable :class:`EnvState` (no tokens are copied)."""
        return self.core.snapshot(0)

    def reset_to(self, state: EnvState) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Restores ``state`` exactly (also into a freshly made env of the same configuration).

        Returns:
            The observation and info at the restored depth, like ``reset()``.

        Raises:
            TypeError: If ``state`` is not an :class:`EnvState`.
            ValueError: If ``state`` came from an env with another tokenizer, dataset, template or
                token limits, or if any field is invalid (token ids outside the vocabulary or not a
                1-D integer array, lengths over the limits, a problem index out of range or not
                matching the problem, both end flags set, a malformed ``rng_state``); the message
                names the field. The state is plain data and is never unpickled or evaluated.
        """
        self.core.restore(0, state)
        self.np_random = self.core.rngs[0]
        return self.core.observation_row(0), self._start_info()

    def render(self) -> str | None:
        if not self.core.started[0]:
            return None
        text = self.core.text(0)
        if self.render_mode == "human":
            print(text)
            return None
        return text

    def close(self) -> None:
        if self.grader is not None:
            self.grader.close()
        super().close()
