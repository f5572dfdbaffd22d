"""Atomic, verified checkpoints: model, optimizer, RNG states, step and strategy state.

Layout under ``<output_dir>/checkpoints``::

    step-000010/            one complete checkpoint (written as step-000010.tmp-*, then renamed)
        model.pt            the policy's state_dict
        optimizer.pt        optimizer (and scheduler) state
        state.pt            step, RNG states, strategy state, extra trainer state
        MANIFEST.json       sha256 and size of every file above, written after them
        COMPLETE            marker written last
    latest                  name of the newest complete checkpoint (replaced atomically)
    reference.pt            the frozen KL reference (with reference.pt.sha256 beside it)

Safety: every file is read with ``torch.load(weights_only=True)``, which rebuilds only tensors and
plain containers (dict, list, tuple, str, int, float, bool, None, bytes): nothing in a checkpoint can
name a class or a function to run. NumPy arrays and scalars in the trainer state are stored as their
raw bytes and dtype; other objects (say, a tokenizer object inside ``config.env_kwargs``, kept for
the record only) are stored as their ``repr`` and come back as ``{"__unrestorable__": repr}``.

Verification: :func:`load_checkpoint` checks every file against the manifest before reading it, and
:func:`resume_checkpoint` walks the checkpoints newest first, warning with the bad file's name
(:class:`CheckpointFallbackWarning`) and falling back to the newest one that verifies and loads.

Writes: a checkpoint is built in ``step-N.tmp-*`` and renamed into place only once complete (files,
manifest and marker fsynced), so a killed run leaves at worst a ``*.tmp-*`` directory, which is
ignored and cleaned up. A write that fails (disk full, permissions) raises
:class:`CheckpointWriteError` naming the cause and the path, removes its temporary directory and
leaves every earlier checkpoint and the ``latest`` pointer as they were.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "CheckpointFallbackWarning",
    "CheckpointWriteError",
    "latest_checkpoint",
    "load_checkpoint",
    "load_tensors",
    "resume_checkpoint",
    "save_checkpoint",
    "save_tensors_atomic",
    "verify_checkpoint",
]

MANIFEST = "MANIFEST.json"
_FILES = ("model.pt", "optimizer.pt", "state.pt")
_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint is damaged, incomplete or cannot be read; the message names the file."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (disk full, permissions, ...); earlier checkpoints are intact."""


class CheckpointFallbackWarning(UserWarning):
    """The newest checkpoint was damaged; resuming from an older one (the message names the bad file)."""


# -- global RNGs ------------------------------------------------------------------------------------
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


# -- plain-data encoding of the trainer state -------------------------------------------------------
def _encode(obj: Any) -> Any:
    """``obj`` with NumPy values as tagged bytes, so ``torch.load(weights_only=True)`` can read it."""
    if isinstance(obj, np.generic):  # before the primitives: np.float64 is a float subclass
        return {"__npscalar__": _raw(np.asarray(obj)), "dtype": obj.dtype.str}
    if obj is None or type(obj) in (bool, int, float, str) or isinstance(obj, torch.Tensor):
        return obj
    for base in (bool, int, float, str):  # an IntEnum or str subclass would be pickled by class
        if isinstance(obj, base):
            return base(obj)
    if isinstance(obj, (bytes, bytearray)):
        return {"__bytes__": _raw(np.frombuffer(bytes(obj), dtype=np.uint8))}
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            return {"__unrestorable__": repr(obj)[:1000]}
        return {"__ndarray__": _raw(obj), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_encode(v) for v in obj)
    if isinstance(obj, list):
        return [_encode(v) for v in obj]
    return {"__unrestorable__": repr(obj)[:1000]}


def _raw(array: np.ndarray) -> torch.Tensor:
    # The array's bytes as a uint8 tensor: weights_only loading rebuilds tensors, not bytes objects.
    return torch.frombuffer(bytearray(np.ascontiguousarray(array).tobytes()) or bytearray(1), dtype=torch.uint8)[
        : array.nbytes
    ].clone()


def _unraw(tensor: Any, dtype: Any) -> np.ndarray:
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.uint8:
        raise CheckpointError("A stored NumPy value is not a byte tensor; the state file is damaged.")
    return np.frombuffer(tensor.numpy().tobytes(), dtype=np.dtype(dtype))


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return _unraw(obj["__ndarray__"], obj["dtype"]).reshape(obj["shape"]).copy()
        if "__bytes__" in obj:
            return _unraw(obj["__bytes__"], np.uint8).tobytes()
        if "__npscalar__" in obj:
            return _unraw(obj["__npscalar__"], obj["dtype"])[0]
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_decode(v) for v in obj)
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


# -- writing ----------------------------------------------------------------------------------------
class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes what it writes and remembers the OS error that stopped it."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.sha = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        try:
            self.handle.write(view)
        except OSError as e:
            self.error = e
            raise
        self.sha.update(view)
        self.size += len(view)
        return len(view)


def _open_write(path: Path) -> BinaryIO:
    """Opens ``path`` for writing (a seam: tests point it at ``/dev/full`` to make a real ENOSPC)."""
    return open(path, "wb")


def _why(error: BaseException) -> str:
    code = getattr(error, "errno", None)
    if code == errno.ENOSPC:
        return "no space left on device"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied" if code != errno.EROFS else "read-only file system"
    if code == errno.EDQUOT:
        return "disk quota exceeded"
    if code == errno.EFBIG:
        return "file too large (a file-size limit was reached)"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return f"{type(error).__name__}: {error}"


def _write_error(path: Path, error: BaseException, root: Path | None = None) -> CheckpointWriteError:
    kept = ""
    if root is not None:
        good = [p.name for p in _candidates(root)]
        kept = f" Earlier checkpoints are intact ({', '.join(good[-3:]) or 'none yet'})."
    code = getattr(error, "errno", None) or errno.EIO
    return CheckpointWriteError(
        code, f"Could not write checkpoint: {_why(error)} at {path}.{kept} Free space or fix permissions, then resume."
    )


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - some file systems cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _save_file(obj: Any, path: Path) -> dict[str, Any]:
    """``torch.save`` to ``path`` through a hashing writer; returns the file's manifest entry."""
    handle = _open_write(path)
    writer = _HashingWriter(handle)
    try:
        with handle:
            torch.save(obj, writer)  # type: ignore[arg-type]
            handle.flush()
            os.fsync(handle.fileno())
    except (OSError, RuntimeError) as e:
        # torch wraps errors of the underlying write in a RuntimeError; report the OS error itself.
        raise writer.error or e from e
    return {"sha256": writer.sha.hexdigest(), "bytes": writer.size}


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# Kept for callers of the old name.
_write_atomic = _write_text_atomic


def save_tensors_atomic(path: Path, obj: Any) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename into place, with a checksum.

    ``path.sha256`` (written after the file) lets :func:`load_tensors` verify it.

    Raises:
        CheckpointWriteError: If the write failed (the message says why and where).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp-")
    except OSError as e:
        raise _write_error(path, e) from e
    os.close(fd)
    try:
        entry = _save_file(_encode(obj), Path(tmp))
        os.replace(tmp, path)
        _write_text_atomic(path.with_name(path.name + ".sha256"), f"{entry['sha256']}  {path.name}\n")
    except OSError as e:
        raise _write_error(path, e) from e
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
    """Writes checkpoint ``step`` atomically (with its manifest) and prunes all but the newest ``keep``.

    Returns:
        The directory of the new checkpoint.

    Raises:
        CheckpointWriteError: If writing failed; nothing earlier was changed.
    """
    root = Path(root)
    final = root / f"step-{step:06d}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=root))
    except OSError as e:
        raise _write_error(root, e, root if root.is_dir() else None) from e
    current = tmp
    try:
        files: dict[str, Any] = {}
        payloads = {
            "model.pt": model.state_dict(),
            "optimizer.pt": optimizer.state_dict(),
            "state.pt": _encode({"step": step, "rng": rng_state(), **trainer_state}),
        }
        for name, obj in payloads.items():
            current = tmp / name
            files[name] = _save_file(obj, current)
        current = tmp / MANIFEST
        manifest = {"format": _FORMAT, "step": int(step), "files": files}
        with _open_write(current) as f:
            f.write(json.dumps(manifest, indent=1).encode())
            f.flush()
            os.fsync(f.fileno())
        current = tmp / "COMPLETE"
        with _open_write(current) as f:
            f.write(b"ok\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        current = final
        trash = None
        if final.exists():
            trash = root / f"{final.name}.tmp-old-{os.getpid()}"
            os.rename(final, trash)
        os.rename(tmp, final)
        _fsync_dir(root)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        current = root / "latest"
        _write_text_atomic(current, final.name + "\n")
    except OSError as e:
        raise _write_error(current, e, root) from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    done = _candidates(root)
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob("step-*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


# -- reading ----------------------------------------------------------------------------------------
def _candidates(root: Path) -> list[Path]:
    """Complete-looking checkpoint directories under ``root``, oldest first."""
    return sorted(p for p in root.glob("step-*") if ".tmp-" not in p.name and (p / "COMPLETE").is_file())


def latest_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint under ``root`` with a completion marker (not yet verified), or None."""
    root = Path(root)
    pointer = root / "latest"
    if pointer.is_file():
        candidate = root / pointer.read_text(errors="replace").strip()
        if candidate.name.startswith("step-") and (candidate / "COMPLETE").is_file():
            return candidate
    done = _candidates(root)
    return done[-1] if done else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checkpoint(path: Path) -> None:
    """Checks every file of checkpoint ``path`` against its manifest (size and sha256).

    Raises:
        CheckpointError: Naming the first missing, truncated or altered file (or the manifest).
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not (path / "COMPLETE").is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint: no COMPLETE marker.")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if manifest.get("format") != _FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {manifest.get('format')!r}")
    except FileNotFoundError as e:
        raise CheckpointError(f"{manifest_path} is missing: the checkpoint cannot be verified.") from e
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{manifest_path} is damaged ({e}).") from e
    for name in _FILES:
        entry = files.get(name)
        file = path / name
        if not isinstance(entry, dict):
            raise CheckpointError(f"{manifest_path} has no entry for {name}.")
        if not file.is_file():
            raise CheckpointError(f"{file} is missing.")
        size = file.stat().st_size
        if size != entry.get("bytes"):
            raise CheckpointError(f"{file} is truncated or altered: {size} bytes, the manifest says {entry.get('bytes')}.")
        if _sha256(file) != entry.get("sha256"):
            raise CheckpointError(f"{file} is damaged: its sha256 does not match the manifest.")


def _torch_load(path: Path, map_location: Any = None) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, OSError...
        raise CheckpointError(f"{path} cannot be read safely ({type(e).__name__}: {str(e).splitlines()[0][:200]}).") from e


def load_tensors(path: Path, map_location: Any = None) -> Any:
    """Reads a :func:`save_tensors_atomic` file, checking its ``.sha256`` when there is one.

    Raises:
        CheckpointError: If the file is missing, damaged, or holds anything but tensors and plain data.
    """
    path = Path(path)
    digest = path.with_name(path.name + ".sha256")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing.")
    if digest.is_file() and digest.read_text(errors="replace").split()[:1] != [_sha256(path)]:
        raise CheckpointError(f"{path} is damaged: its sha256 does not match {digest.name}.")
    return _decode(_torch_load(path, map_location))


def load_checkpoint(
    path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Verifies checkpoint ``path``, loads model and optimizer in place, restores the global RNGs,
    and returns the trainer state.

    Raises:
        CheckpointError: If the checkpoint is incomplete, damaged or does not fit the model; the
            message names the file.
    """
    path = Path(path)
    verify_checkpoint(path)
    device = next(model.parameters()).device
    weights = _torch_load(path / "model.pt", device)
    optim = _torch_load(path / "optimizer.pt", device)
    state = _decode(_torch_load(path / "state.pt"))
    if not isinstance(state, dict) or "rng" not in state or "step" not in state:
        raise CheckpointError(f"{path / 'state.pt'} does not hold a trainer state (no 'step'/'rng').")
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path / 'model.pt'} does not fit this model: {str(e).splitlines()[0][:300]}") from e
    try:
        optimizer.load_state_dict(optim)
    except (RuntimeError, TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path / 'optimizer.pt'} does not fit this optimizer: {e}") from e
    try:
        set_rng_state(state.pop("rng"))
    except (RuntimeError, TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path / 'state.pt'} holds invalid RNG states: {e}") from e
    return state


def resume_checkpoint(
    root: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[Path, dict[str, Any]] | None:
    """Loads the newest checkpoint under ``root`` that verifies, falling back past damaged ones.

    Each damaged or incomplete checkpoint that is skipped raises a :class:`CheckpointFallbackWarning`
    naming the bad file.

    Returns:
        ``(path, trainer state)``, or None when ``root`` holds no checkpoint at all.

    Raises:
        CheckpointError: If checkpoints exist but none of them verifies (each reason is listed).
    """
    root = Path(root)
    done = _candidates(root)
    newest = latest_checkpoint(root)
    if newest is not None and newest in done:
        done.remove(newest)
        done.append(newest)
    # A directory that lost its COMPLETE marker or manifest is incomplete: say so if it is the newest.
    incomplete = sorted(p for p in root.glob("step-*") if ".tmp-" not in p.name and p not in done)
    if incomplete and (not done or incomplete[-1].name > done[-1].name):
        warnings.warn(
            f"Skipping checkpoint {incomplete[-1]}: {incomplete[-1] / 'COMPLETE'} is missing (incomplete write).",
            CheckpointFallbackWarning, stacklevel=2,
        )
    reasons = []
    for path in reversed(done):
        try:
            return path, load_checkpoint(path, model=model, optimizer=optimizer)
        except CheckpointError as e:
            reasons.append(str(e))
            warnings.warn(
                f"Skipping damaged checkpoint {path.name}: {e} Falling back to an older checkpoint.",
                CheckpointFallbackWarning, stacklevel=2,
            )
    if reasons:
        raise CheckpointError(
            f"No usable checkpoint in {root}: " + " | ".join(reasons)
            + " Delete the damaged directories to start fresh, or restore them from a backup."
        )
    return None
