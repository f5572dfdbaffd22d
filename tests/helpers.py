"""Test helpers: a tiny codec and problem list for fast env tests."""

from __future__ import annotations

from collections.abc import Sequence

from deepgrpo_env.problems import Problem


class TinyCodec:
    """A character codec over a small alphabet; stop token 1, pad 0 (test-only)."""

    alphabet = "0123456789+-*=? abcdefghijklmnopqrstuvwxyz.\n"

    def __init__(self) -> None:
        self.vocab_size = 2 + len(self.alphabet)
        self.pad_token_id = 0
        self.stop_token_ids = (1,)

    def encode(self, text: str) -> list[int]:
        return [2 + self.alphabet.index(c) for c in text.lower()]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.alphabet[i - 2] for i in ids if i >= 2)

    def chat_prompt(self, user: str, system: str | None = None) -> list[int]:
        return self.encode(user + "\n")

    def fingerprint(self) -> str:
        return "tiny-" + str(self.vocab_size)


TINY_PROBLEMS = tuple(
    Problem(id=f"t-{i}", question=f"what is {i}+{i + 1}?", reference=str(2 * i + 1), source="tiny")
    for i in range(20)
)
