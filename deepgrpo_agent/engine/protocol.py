"""The generation protocol: engines deal only in token ids, never in text or tokenizers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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
    """A generation backend (transformers today; vLLM later).

    Attributes:
        vocab_size: The action space: token ids ``0 .. vocab_size - 1`` (the env's
            ``single_action_space.n``, the trainer's ``vocab_size``). Logits of ids ``>= vocab_size``
            (a padded output head) are excluded before the softmax, as
            :func:`deepgrpo_agent.scoring.restrict_vocab` does: never sampled, and log-probs and
            entropies are those of the distribution over ids ``< vocab_size``, which is what the loss
            scores. Every engine must apply this same rule.
    """

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

    def sync_weights(self, model: Any) -> None:
        """Makes the engine generate with ``model``'s current weights."""
        ...
