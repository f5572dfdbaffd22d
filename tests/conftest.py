"""Shared fixtures for the test suite."""

from __future__ import annotations

import pytest

from deepgrpo_env.problems import Problem
from tests.helpers import TINY_PROBLEMS, TinyCodec


@pytest.fixture
def tiny_codec() -> TinyCodec:
    return TinyCodec()


@pytest.fixture
def tiny_problems() -> tuple[Problem, ...]:
    return TINY_PROBLEMS
