"""Generation engines behind a token-id protocol."""

from deepgrpo_agent.engine.protocol import DecodeSession, Engine, SamplingParams

__all__ = ["DecodeSession", "Engine", "SamplingParams"]
