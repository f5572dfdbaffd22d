"""deepgrpo_agent: train LLM policies on deepgrpo envs with GRPO, DEEP-GRPO, ERPO and tree baselines."""

from deepgrpo_agent.attnrl import AttnRLConfig, AttnRLTrainer
from deepgrpo_agent.config import GRPOConfig
from deepgrpo_agent.deep_grpo import DeepGRPOConfig, DeepGRPOTrainer
from deepgrpo_agent.engine import Engine, SamplingParams
from deepgrpo_agent.erpo import DeepERPOConfig, DeepERPOTrainer, ERPOConfig, ERPOTrainer
from deepgrpo_agent.trainer import GRPOTrainer, TrainSamples
from deepgrpo_agent.tree import TreeConfig, TreeRLTrainer, UniformTreeConfig, UniformTreeTrainer

__all__ = [
    "AttnRLConfig",
    "AttnRLTrainer",
    "DeepERPOConfig",
    "DeepERPOTrainer",
    "DeepGRPOConfig",
    "DeepGRPOTrainer",
    "ERPOConfig",
    "ERPOTrainer",
    "Engine",
    "GRPOConfig",
    "GRPOTrainer",
    "SamplingParams",
    "TrainSamples",
    "TreeConfig",
    "TreeRLTrainer",
    "UniformTreeConfig",
    "UniformTreeTrainer",
]
