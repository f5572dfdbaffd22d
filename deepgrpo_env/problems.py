"""The problem record every environment and dataset loader deals in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One reasoning problem, normalized across datasets.

    Attributes:
        id: Stable identifier, unique within its dataset (e.g. ``"gsm8k-train-17"``).
        question: The text shown to the model (without any instruction or template).
        reference: The reference final answer as a string (``"72"``, ``"\\frac{1}{2}"``).
        source: Name of the dataset the problem came from (``"gsm8k"``), empty if unknown.
    """

    id: str
    question: str
    reference: str
    source: str = ""
