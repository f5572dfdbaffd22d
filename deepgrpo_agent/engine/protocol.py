"""The generation protocol: engines deal only in token ids, never in text or tokenizers.

Two ways in, one protocol: token-step sessions (:meth:`Engine.start`, then ``sample``/``advance``, the
HF engine's native mode) and whole requests (:meth:`Engine.generate`, vLLM's native mode). The rollout
uses the engine's native mode (:attr:`Engine.request_level`); either way the env decides where an
episode ends and what it scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is drawn.

    Attributes:
        temperature: Logits are divided by it; 0 means greedy. Log-probs and entropies are those of
            the temperature-scaled distribution (the same one the trainer scores), before top-p.
        top_p: Nucleus sampling mass (1.0 = off).
        max_new_tokens: Upper bound on generated tokens per row (the env may end rows earlier).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"Expected `temperature` >= 0, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"Expected 0 < `top_p` <= 1, got {self.top_p}.")
        if self.max_new_tokens < 1:
            raise ValueError(f"Expected `max_new_tokens` >= 1, got {self.max_new_tokens}.")


FinishReason = Literal["stop", "length"]
"""Why a completion ended: a stop token (included as its last token) or its token budget."""


@dataclass(frozen=True)
class Completion:
    """One generated continuation of a request.

    Attributes:
        token_ids: Generated ids, (T,) int64; the last one is the stop token when ``finish == "stop"``.
        logprobs: Log-prob of each generated token under the sampling distribution (temperature
            scaled, like :meth:`DecodeSession.sample`'s), (T,) float32.
        entropies: Entropy of the sampling distribution at each token, (T,) float32; None when the
            engine cannot compute it (vLLM returns no full distributions).
        finish: ``"stop"`` or ``"length"``.
        cached_tokens: Tokens of the request's start sequence found in the engine's prefix cache (not
            recomputed); 0 when the engine does not say.
    """

    token_ids: npt.NDArray[np.int64]
    logprobs: npt.NDArray[np.float32]
    entropies: npt.NDArray[np.float32] | None
    finish: FinishReason
    cached_tokens: int = 0


class DecodeSession(Protocol):
    """Incremental batched decoding over ``num_rows`` rows that share one KV cache.

    Rows are laid out as ``repeat`` consecutive copies of each start sequence:
    row ``i * repeat + k`` is copy ``k`` of ``sequences[i]``.
    """

    num_rows: int

    def sample(
        self, generator: Any | None = None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Draws the next token of every row from the current logits.

        Returns:
            ``(tokens (R,), logprobs (R,), entropies (R,))`` under the temperature-scaled distribution.
        """
        ...

    def advance(self, tokens: npt.NDArray[np.int64], active: npt.NDArray[np.bool_]) -> None:
        """Feeds ``tokens`` (R,) to the rows in ``active`` (R,) and computes the next logits.

        Inactive rows (ended episodes) are neither extended nor attended to any more.
        """
        ...


class Engine(Protocol):
    """A generation backend (transformers: :class:`~deepgrpo_agent.engine.hf.HFEngine`; vLLM:
    :class:`~deepgrpo_agent.engine.vllm.VLLMEngine`).

    Attributes:
        request_level: True when :meth:`generate` is the engine's native mode (the rollout then
            generates whole completions and replays them through the env); False for token-step
            engines, whose :meth:`start` sessions the env drives token by token.
        vocab_size: The action space: token ids ``0 .. vocab_size - 1`` (the env's
            ``single_action_space.n``, the trainer's ``vocab_size``). Logits of ids ``>= vocab_size``
            (a padded output head) are excluded before the softmax, as
            :func:`deepgrpo_agent.scoring.restrict_vocab` does: never sampled, and log-probs and
            entropies are those of the distribution over ids ``< vocab_size``, which is what the loss
            scores. Every engine must apply this same rule.
    """

    request_level: bool
    vocab_size: int

    def start(
        self,
        sequences: Sequence[npt.NDArray[np.int64]],
        params: SamplingParams,
        *,
        repeat: int = 1,
        temperatures: Sequence[float] | npt.NDArray[np.floating] | None = None,
    ) -> DecodeSession:
        """Prefills each sequence ONCE and expands its cache to ``repeat`` rows (the branching primitive).

        Sequences may have different lengths (left padding, attention mask and positions are the
        engine's business). ``temperatures`` (one per row, ``len(sequences) * repeat``, each > 0)
        replaces ``params.temperature`` row by row, for sampling, log-probs and entropies alike
        (ERPO's per-prompt temperatures); callers that do not need it never pass it.
        """
        ...

    def generate(
        self,
        sequences: Sequence[npt.NDArray[np.int64]],
        params: SamplingParams,
        *,
        repeat: int = 1,
        temperatures: Sequence[float] | npt.NDArray[np.floating] | None = None,
        stop_token_ids: Sequence[int] = (),
        max_tokens: Sequence[int] | None = None,
        generator: Any | None = None,
    ) -> list[Completion]:
        """Completes ``repeat`` continuations of each sequence (rows laid out as in :meth:`start`).

        A row ends right after it emits one of ``stop_token_ids`` (which it keeps) or once it has
        ``max_tokens[i]`` tokens (one budget per start sequence; None = ``params.max_new_tokens``
        each); nothing else ends it (no EOS of the model's own). Callers pass the env's stop ids and
        remaining response budget so that engine and env end every row at the same token.
        ``generator`` (a ``torch.Generator``) seeds the sampling: the same generator state, weights
        and inputs give the same completions.
        """
        ...

    def sync_weights(self, model: Any) -> None:
        """Makes the engine generate with ``model``'s current weights."""
        ...


def generate_by_steps(
    engine: Engine,
    sequences: Sequence[npt.NDArray[np.int64]],
    params: SamplingParams,
    *,
    repeat: int = 1,
    temperatures: Sequence[float] | npt.NDArray[np.floating] | None = None,
    stop_token_ids: Sequence[int] = (),
    max_tokens: Sequence[int] | None = None,
    generator: Any | None = None,
) -> list[Completion]:
    """:meth:`Engine.generate` for a token-step engine: one session, ended rows dropped step by step.

    The session draws exactly what an env-driven loop over the same rows draws (one ``sample`` per
    step, the same ``advance`` calls), so with the env's stop ids and budgets the completions equal
    the token-step rollout's tokens.
    """
    seqs = list(sequences)
    budgets = token_budgets(max_tokens, len(seqs), params.max_new_tokens)
    horizon = int(budgets.max())
    step_params = params if horizon == params.max_new_tokens else _with_max_new_tokens(params, horizon)
    if temperatures is None:
        session = engine.start(seqs, step_params, repeat=repeat)
    else:
        session = engine.start(seqs, step_params, repeat=repeat, temperatures=temperatures)
    n = session.num_rows
    limit = np.repeat(budgets, repeat)  # (R,)
    stops = np.asarray(sorted({int(t) for t in stop_token_ids}), dtype=np.int64)
    tok = np.zeros((horizon, n), dtype=np.int64)
    lp = np.zeros((horizon, n), dtype=np.float32)
    ent = np.zeros((horizon, n), dtype=np.float32)
    lengths = np.zeros(n, dtype=np.int64)
    stopped = np.zeros(n, dtype=bool)
    live = np.ones(n, dtype=bool)
    for t in range(horizon):
        tok[t], lp[t], ent[t] = session.sample(generator)
        lengths += live
        hit = live & np.isin(tok[t], stops)
        stopped |= hit
        live &= ~hit & (lengths < limit)
        if not live.any():
            break
        if t + 1 < horizon:
            session.advance(tok[t], live.copy())
    # Each distinct sequence is prefilled once; its other copies reuse that cache.
    cached = [0 if j % repeat == 0 else len(seqs[j // repeat]) for j in range(n)]
    return [
        Completion(tok[: lengths[j], j].copy(), lp[: lengths[j], j].copy(), ent[: lengths[j], j].copy(),
                   "stop" if stopped[j] else "length", cached[j])
        for j in range(n)
    ]


def token_budgets(max_tokens: Sequence[int] | None, count: int, default: int) -> npt.NDArray[np.int64]:
    """One token budget >= 1 per start sequence, checked."""
    if max_tokens is None:
        return np.full(count, default, dtype=np.int64)
    budgets = np.asarray(max_tokens)
    if budgets.shape != (count,) or not np.issubdtype(budgets.dtype, np.integer) or (budgets < 1).any():
        raise ValueError(
            f"Expected `max_tokens` to hold one int >= 1 per start sequence ({count}), got "
            f"{np.asarray(max_tokens).tolist()}; an env row with no budget left has already ended."
        )
    return budgets.astype(np.int64)


def _with_max_new_tokens(params: SamplingParams, max_new_tokens: int) -> SamplingParams:
    return SamplingParams(params.temperature, params.top_p, max_new_tokens)
