"""Loading the policy model: the embedded default, the arithmetic testbed, a local checkpoint directory, or a module you built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from deepgrpo_agent.default_model import INSTALL_HINT, default_model_dir
from deepgrpo_agent.precision import Precision, resolve_precision
from deepgrpo_agent.testbed import DEEP_TESTBED, DEEP_TESTBED_DIR, TESTBED, TESTBED_DIR, load_testbed


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"Expected a torch device like 'cpu', 'cuda', 'cuda:1' or 'auto', got {device!r}.") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {device!r} was asked for but CUDA is not available; use device='cpu'.")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The *compute* dtype of ``dtype`` on ``device``: ``"auto"`` is bf16 on CUDA and on CPUs with native
    bf16 (``avx512_bf16``/``amx_bf16``), else fp32 (see :func:`~deepgrpo_agent.precision.resolve_precision`,
    which also says which dtype the weights are kept in)."""
    return resolve_precision(dtype, device).compute_dtype


def model_precision(model: torch.nn.Module, dtype: str, device: torch.device) -> Precision:
    """The run's :class:`~deepgrpo_agent.precision.Precision` for a loaded ``model``.

    ``"auto"`` counts the model's parameters (tiny models stay fp32). Weights already in a narrow dtype
    (a module the user built in bf16) stay so: then there is no fp32 master copy and no autocast.
    """
    num_params = sum(p.numel() for p in model.parameters())
    precision = resolve_precision(dtype, device, num_params)
    param = next(model.parameters(), None)
    if param is not None and param.dtype != precision.param_dtype:
        compute = precision.compute_dtype if param.dtype == torch.float32 else param.dtype
        return Precision(param.dtype, compute, device.type)
    return precision


def load_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The dtype to load weights in for ``dtype``: the master-weight dtype (fp32 unless fp16 was asked)."""
    return resolve_precision(dtype, device).param_dtype


def model_path(model: str) -> Path:
    """The checkpoint directory for ``model``: ``"default"`` materializes the embedded default,
    ``"arithmetic-testbed"`` is the shipped testbed policy (:mod:`deepgrpo_agent.testbed`)."""
    if model == TESTBED:
        return TESTBED_DIR
    if model == DEEP_TESTBED:
        return DEEP_TESTBED_DIR
    if model == "default":
        try:
            return default_model_dir()
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}") from e
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"Expected `model` to be 'default', {TESTBED!r} or a local transformers checkpoint directory with a "
            f"config.json, got {model!r}. Hub ids cannot be downloaded here; for the default model run: "
            f"{INSTALL_HINT}"
        )
    return path


RANDOM_TINY = "random-tiny"
"""``model`` value for a random-init tiny Llama sized to the env (testbeds, smoke runs)."""


def random_tiny_model(vocab_size: int, seed: int = 0) -> torch.nn.Module:
    """A random-init 2-layer Llama (hidden 64) whose vocabulary is the env's action space."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    return LlamaForCausalLM(config)


def load_policy(model: str, *, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """Loads ``(model, tokenizer)`` from ``"default"``, ``"arithmetic-testbed"`` or a local directory.

    The testbed has no tokenizer (Arithmetic-v0's CharCodec is its vocabulary) and always loads in
    float32 whatever ``dtype`` says: its weights ship in fp16 and at under a million parameters a
    narrower dtype saves nothing.
    """
    if model == TESTBED:
        return load_testbed(device=device), None
    if model == DEEP_TESTBED:  # same vocabulary and loader, other weights (docs/pivot_utility.md)
        return load_testbed(DEEP_TESTBED_DIR, device=device), None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_path(model)
    module: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    module = module.to(device)
    if getattr(module.config, "quantization_config", None) is not None:
        raise ValueError(
            f"The checkpoint at {path} is quantized and cannot be trained; re-save it in full precision."
        )
    tokenizer = AutoTokenizer.from_pretrained(path)
    return module, tokenizer
