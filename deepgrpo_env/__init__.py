"""deepgrpo_env: reasoning as a token-level Gymnasium environment with exact snapshot/reset_to.

Importing this package registers every environment id (see :mod:`envs_registry`).
"""

import envs_registry  # noqa: F401  (registers the ids)
from deepgrpo_env.arithmetic import (
    ArithmeticEnv,
    ArithmeticSource,
    ArithmeticVectorEnv,
    ArithmeticVerifier,
    CharCodec,
)
from deepgrpo_env.codec import Codec, HFCodec, as_codec
from deepgrpo_env.core import EpisodeLimits
from deepgrpo_env.datasets import DATASETS, DatasetInfo, as_problems, load_dataset, load_jsonl
from deepgrpo_env.env import ReasoningEnv
from deepgrpo_env.grading import Grade, Grader, VerifierError
from deepgrpo_env.problems import Problem
from deepgrpo_env.prompts import PromptTemplate
from deepgrpo_env.sources import DatasetSource, ProblemSource
from deepgrpo_env.state import EnvState
from deepgrpo_env.vector import ReasoningVectorEnv
from deepgrpo_env.verifiers import MathVerifier, NumericVerifier, Verifier, verifier_for
from deepgrpo_env.wrappers import (
    BudgetIsTerminal,
    FormatReward,
    LengthPenalty,
    StateForwardingWrapper,
    VerifierReward,
    register_restore_hook,
    reset_to,
    snapshot,
)
from envs_registry import list_envs

MathReasoningEnv = ReasoningEnv
"""Alias: the env behind every ``MathReasoning-*`` id."""

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "ArithmeticEnv",
    "ArithmeticSource",
    "ArithmeticVectorEnv",
    "ArithmeticVerifier",
    "BudgetIsTerminal",
    "CharCodec",
    "DatasetInfo",
    "as_problems",
    "verifier_for",
    "Codec",
    "DatasetSource",
    "EnvState",
    "EpisodeLimits",
    "FormatReward",
    "Grade",
    "Grader",
    "HFCodec",
    "LengthPenalty",
    "MathReasoningEnv",
    "MathVerifier",
    "NumericVerifier",
    "Problem",
    "ProblemSource",
    "PromptTemplate",
    "ReasoningEnv",
    "ReasoningVectorEnv",
    "StateForwardingWrapper",
    "Verifier",
    "VerifierError",
    "VerifierReward",
    "as_codec",
    "list_envs",
    "load_dataset",
    "load_jsonl",
    "register_restore_hook",
    "reset_to",
    "snapshot",
]
