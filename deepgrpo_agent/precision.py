"""Numeric precision of a run: which dtype the matmuls use, which dtype the weights are kept in.

``dtype="auto"`` picks bfloat16 *compute* where the hardware does bf16 matmuls natively (CUDA, and CPUs
with the ``avx512_bf16`` or ``amx_bf16`` flags) and float32 elsewhere. bf16 is always *mixed* precision
(docs/precision.md):

- the training model's master weights, gradients and AdamW state stay float32;
- forward and backward of the update run under ``torch.autocast(device, torch.bfloat16)``, so the
  linear layers multiply in bf16 (fp32 accumulation) while norms, softmax and the residual stream stay fp32;
- log-probs and the loss are computed in float32 from the (bf16) logits;
- the old-policy log-prob and the ratio's log-prob come from the same function under the same autocast,
  so the on-policy ratio is exactly 1;
- the rollout engine generates with a bf16 *copy* of the weights (re-synced after every update): decoding
  does not re-cast the fp32 weights on every token.

Tiny models (under :data:`AUTO_BF16_MIN_PARAMS` parameters: the testbeds, ``random-tiny``) stay float32
under ``"auto"``: at that size the casts cost more than the matmuls save, and their results stay bitwise
reproducible against the fp32 references the tests compare with.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "AUTO_BF16_MIN_PARAMS",
    "Precision",
    "cpu_has_native_bf16",
    "resolve_precision",
]

AUTO_BF16_MIN_PARAMS = 10_000_000
"""Below this many parameters ``dtype="auto"`` keeps float32 (casts would dominate the matmuls)."""

_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_ENV_OVERRIDE = "DEEPGRPO_CPU_BF16"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags listed in ``cpuinfo`` (empty when the file is missing: not Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (``avx512_bf16`` / ``amx_bf16`` flags).

    ``DEEPGRPO_CPU_BF16=1`` or ``=0`` overrides the detection (cached per process).
    """
    override = os.environ.get(_ENV_OVERRIDE)
    if override is not None:
        if override not in ("0", "1"):
            raise ValueError(f"Expected {_ENV_OVERRIDE}=0 or 1, got {override!r}; unset it to detect from the CPU flags.")
        return override == "1"
    return any(flag in cpu_flags() for flag in _NATIVE_BF16_FLAGS)


@dataclass(frozen=True)
class Precision:
    """How a run computes.

    Attributes:
        param_dtype: Dtype of the trained weights, their gradients and the optimizer state.
        compute_dtype: Dtype of the matmuls; differs from ``param_dtype`` under mixed precision.
        device_type: ``"cpu"`` or ``"cuda"`` (the autocast device).
    """

    param_dtype: torch.dtype
    compute_dtype: torch.dtype
    device_type: str

    @property
    def mixed(self) -> bool:
        """True when the matmuls run in a narrower dtype than the weights (autocast)."""
        return self.compute_dtype != self.param_dtype

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """``torch.autocast`` to ``compute_dtype`` under mixed precision; a no-op otherwise."""
        if not self.mixed:
            yield
            return
        with torch.autocast(self.device_type, dtype=self.compute_dtype):
            yield

    def __str__(self) -> str:
        name = str(self.compute_dtype).removeprefix("torch.")
        return f"{name} autocast, fp32 master weights" if self.mixed else name


def resolve_precision(dtype: str, device: torch.device, num_params: int | None = None) -> Precision:
    """The :class:`Precision` for a config's ``dtype`` on ``device``.

    Args:
        dtype: ``"auto"``, ``"float32"``/``"fp32"``, ``"bfloat16"``/``"bf16"`` or ``"float16"``/``"fp16"``.
            bf16 is mixed precision (fp32 weights, bf16 autocast); fp16 keeps fp16 weights (no loss
            scaling: not recommended for training).
        device: Where the model runs.
        num_params: The model's parameter count, when known; ``"auto"`` keeps fp32 below
            :data:`AUTO_BF16_MIN_PARAMS`.
    """
    if dtype == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        big = num_params is None or num_params >= AUTO_BF16_MIN_PARAMS
        dtype = "bfloat16" if native and big else "float32"
    if dtype not in _DTYPES:
        raise ValueError(f"Expected dtype in {sorted(_DTYPES)} or 'auto', got {dtype!r}.")
    compute = _DTYPES[dtype]
    param = torch.float32 if compute == torch.bfloat16 else compute
    return Precision(param_dtype=param, compute_dtype=compute, device_type=device.type)
