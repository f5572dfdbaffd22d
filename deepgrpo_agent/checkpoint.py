"""Atomic, complete checkpoints: model, optimizer, RNG states, step and strategy state.

Layout under ``<output_dir>/checkpoints``::

    step-000010/            one complete checkpoint (written as step-000010.tmp-*, then renamed)
        model.pt            the policy's state_dict
        optimizer.pt        optimizer (and scheduler) state
        state.pt            step, RNG states, strategy state, extra trainer state
        COMPLETE            marker written last
    latest                  name of the newest complete checkpoint (replaced atomically)

A killed run leaves at worst a ``*.tmp-*`` directory, which is ignored and cleaned up.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Every global RNG the trainer relies on."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores :func:`rng_state` output."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_tensors_atomic(path: Path, obj: Any) -> None:
    """``torch.save`` to a temporary file in the same directory, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp-")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(
    root: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Writes checkpoint ``step`` atomically and prunes all but the newest ``keep``.

    Returns:
        The directory of the new checkpoint.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=root))
    try:
        torch.save(model.state_dict(), tmp / "model.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"step": step, "rng": rng_state(), **trainer_state}, tmp / "state.pt")
        (tmp / "COMPLETE").write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _write_atomic(root / "latest", final.name + "\n")
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob("step-*") if (p / "COMPLETE").is_file() and ".tmp-" not in p.name)
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob("step-*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    pointer = root / "latest"
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / "COMPLETE").is_file():
            return candidate
    done = sorted(p for p in root.glob("step-*") if (p / "COMPLETE").is_file() and ".tmp-" not in p.name)
    return done[-1] if done else None


def load_checkpoint(
    path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Loads model and optimizer in place, restores global RNGs, and returns the trainer state."""
    if not (path / "COMPLETE").is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no COMPLETE marker).")
    device = next(model.parameters()).device
    model.load_state_dict(torch.load(path / "model.pt", map_location=device))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device))
    state: dict[str, Any] = torch.load(path / "state.pt", weights_only=False)
    set_rng_state(state.pop("rng"))
    return state
