"""Prompt templates: how a problem's question becomes the token ids the policy sees."""

from __future__ import annotations

from dataclasses import dataclass

from deepgrpo_env.codec import Codec
from deepgrpo_env.types import PromptStyle, TokenArray

_INSTRUCTIONS: dict[str, str] = {
    "boxed": "Solve the problem step by step. Put the final answer in \\boxed{}.",
    # The DEEP-GRPO paper's GSM8K suffix (docs/methods.md §2).
    "gsm8k-hash": 'Let\'s think step by step and output the final answer after "####".',
    "plain": "",
    # Short answers: SmolLM2-135M finishes 94% of MAWPS answers within 64 tokens with it (docs/main_job.md).
    "brief": "Answer briefly and end with the final number.",
}


@dataclass(frozen=True)
class PromptTemplate:
    """Turns a question into prompt token ids.

    Attributes:
        style: Which answer instruction follows the question (``"boxed"``, ``"gsm8k-hash"``, ``"plain"``, ``"brief"``).
        instruction: Overrides the style's instruction text when not None.
        system: Optional system message (chat templates only).
        chat: Use the tokenizer's chat template when it has one; otherwise plain text.
    """

    style: PromptStyle = "boxed"
    instruction: str | None = None
    system: str | None = None
    chat: bool = True

    def __post_init__(self) -> None:
        if self.style not in _INSTRUCTIONS:
            raise ValueError(
                f"Expected prompt style in {sorted(_INSTRUCTIONS)}, got {self.style!r}; "
                "or pass your own text as `instruction=`."
            )

    def text(self, question: str) -> str:
        """The user message for ``question``."""
        instruction = self.instruction if self.instruction is not None else _INSTRUCTIONS[self.style]
        return f"{question.strip()}\n{instruction}".strip() if instruction else question.strip()

    def encode(self, codec: Codec, question: str) -> TokenArray:
        """Prompt token ids for ``question`` as a read-only int64 array."""
        import numpy as np

        user = self.text(question)
        ids = codec.chat_prompt(user, self.system) if self.chat else codec.encode(user + "\n")
        arr = np.asarray(ids, dtype=np.int64)
        arr.setflags(write=False)
        return arr

    def fingerprint(self) -> str:
        """Stable identity of the template, part of an env's state fingerprint."""
        return repr((self.style, self.instruction, self.system, self.chat))
