"""deepgrpo_agent: train LLM policies on deepgrpo envs with GRPO and DEEP-GRPO."""

from deepgrpo_agent.config import GRPOConfig
from deepgrpo_agent.deep_grpo import DeepGRPOConfig, DeepGRPOTrainer
from deepgrpo_agent.engine import Engine, SamplingParams
from deepgrpo_agent.trainer import GRPOTrainer, TrainSamples

__all__ = [
    "DeepGRPOConfig",
    "DeepGRPOTrainer",
    "Engine",
    "GRPOConfig",
    "GRPOTrainer",
    "SamplingParams",
    "TrainSamples",
]
