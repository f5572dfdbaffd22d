"""Type aliases shared across deepgrpo_env."""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

TokenArray = npt.NDArray[np.int64]
"""A 1-D array of token ids."""

PromptStyle = Literal["boxed", "gsm8k-hash", "plain", "brief"]
"""Which answer instruction a prompt carries: ``\\boxed{}``, the DEEP-GRPO paper's ``####`` suffix, or none."""
