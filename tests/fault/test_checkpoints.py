"""Fault tier: damaged checkpoints fall back to the newest good one, nothing in a checkpoint runs code,
failed writes say why and keep earlier checkpoints, and ``kill -9`` (during training or mid-checkpoint)
then ``--resume`` gives bit-identical weights."""

from __future__ import annotations

import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from deepgrpo_agent import GRPOTrainer
from deepgrpo_agent import checkpoint as ckpt
from tests.agent.tiny import tiny_config, tiny_model
from tests.helpers import TinyCodec

pytestmark = pytest.mark.fault

VOCAB = TinyCodec().vocab_size
STEPS = 3


def trainer(path: Path, model_seed: int = 0, **overrides: Any) -> GRPOTrainer:
    return GRPOTrainer(tiny_config(path, **overrides), model=tiny_model(VOCAB, model_seed))


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """Parameters after an uninterrupted run of STEPS steps."""
    t = trainer(tmp_path_factory.mktemp("straight"), total_steps=STEPS)
    t.train()
    return {n: p.detach().clone() for n, p in t.model.named_parameters()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with checkpoints after steps 1 and 2 (copy it before damaging it)."""
    root = tmp_path_factory.mktemp("saved")
    trainer(root, total_steps=2, save_every=1).train()
    return root


def copy_run(saved: Path, tmp_path: Path) -> Path:
    shutil.copytree(saved, tmp_path / "r")
    return tmp_path / "r"


def resume_and_finish(path: Path) -> GRPOTrainer:
    t = trainer(path, model_seed=123, total_steps=STEPS, resume=True)  # other init: must be overwritten
    t.train()
    return t


def assert_same(model: torch.nn.Module, straight: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        assert torch.equal(p, straight[name]), name


def newest(run: Path) -> Path:
    return run / "run" / "checkpoints" / "step-000002"


def truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def flip_byte(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "bad_file"),
    [
        (lambda d: truncate(d / "model.pt"), "model.pt"),
        (lambda d: flip_byte(d / "model.pt"), "model.pt"),  # one flipped byte must not load silently
        (lambda d: flip_byte(d / "optimizer.pt"), "optimizer.pt"),
        (lambda d: truncate(d / "state.pt"), "state.pt"),
        (lambda d: (d / "state.pt").unlink(), "state.pt"),
        (lambda d: (d / ckpt.MANIFEST).unlink(), ckpt.MANIFEST),
        (lambda d: (d / ckpt.MANIFEST).write_text("{not json"), ckpt.MANIFEST),
        (lambda d: (d / "COMPLETE").unlink(), "COMPLETE"),
    ],
)
def test_a_damaged_newest_checkpoint_falls_back_with_a_warning(
    saved: Path, tmp_path: Path, damage: Any, bad_file: str
) -> None:
    run = copy_run(saved, tmp_path)
    damage(newest(run))
    model = tiny_model(VOCAB, 123)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.warns(ckpt.CheckpointFallbackWarning, match=rf"step-000002.*{bad_file}"):
        found = ckpt.resume_checkpoint(run / "run" / "checkpoints", model=model, optimizer=optimizer)
    assert found is not None
    path, state = found
    assert path.name == "step-000001" and state["step"] == 1  # the intact previous checkpoint


def test_fallback_resume_is_still_bit_identical(saved: Path, tmp_path: Path, straight: dict[str, torch.Tensor]) -> None:
    run = copy_run(saved, tmp_path)
    flip_byte(newest(run) / "model.pt")  # one flipped byte must not load silently
    with pytest.warns(ckpt.CheckpointFallbackWarning, match="step-000002/model.pt is damaged"):
        t = trainer(run, model_seed=123, total_steps=STEPS, resume=True)
    assert t.step == 1
    t.train()
    assert_same(t.model, straight)


def test_no_good_checkpoint_is_a_clear_error(saved: Path, tmp_path: Path) -> None:
    run = copy_run(saved, tmp_path)
    for d in (run / "run" / "checkpoints").glob("step-*"):
        flip_byte(d / "model.pt")
    model = tiny_model(VOCAB, 123)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ckpt.CheckpointFallbackWarning)
        with pytest.raises(ckpt.CheckpointError, match=r"No usable checkpoint.*step-000001/model\.pt is damaged"):
            ckpt.resume_checkpoint(run / "run" / "checkpoints", model=model,
                                   optimizer=torch.optim.AdamW(model.parameters()))


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_a_code_payload_in_state_pt_is_never_run(saved: Path, tmp_path: Path) -> None:
    # The attacker rewrites state.pt and the manifest to match: verification passes, safe loading refuses.
    run = copy_run(saved, tmp_path)
    d = newest(run)
    marker = tmp_path / "PWNED"
    torch.save({"step": 2, "rng": _Payload(str(marker))}, d / "state.pt", pickle_protocol=pickle.HIGHEST_PROTOCOL)
    manifest = (d / ckpt.MANIFEST).read_text()
    import json

    data = json.loads(manifest)
    data["files"]["state.pt"] = {"sha256": ckpt._sha256(d / "state.pt"), "bytes": (d / "state.pt").stat().st_size}
    (d / ckpt.MANIFEST).write_text(json.dumps(data))
    model = tiny_model(VOCAB, 123)
    with pytest.warns(ckpt.CheckpointFallbackWarning, match="state.pt cannot be read safely"):
        found = ckpt.resume_checkpoint(run / "run" / "checkpoints", model=model,
                                       optimizer=torch.optim.AdamW(model.parameters()))
    assert found is not None and found[0].name == "step-000001"
    assert not marker.exists()


def test_reference_model_file_is_verified(tmp_path: Path) -> None:
    path = tmp_path / "reference.pt"
    ckpt.save_tensors_atomic(path, {"w": torch.arange(10.0)})
    assert torch.equal(ckpt.load_tensors(path)["w"], torch.arange(10.0))
    flip_byte(path)
    with pytest.raises(ckpt.CheckpointError, match=r"reference\.pt is damaged"):
        ckpt.load_tensors(path)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full for a real ENOSPC")
def test_disk_full_says_so_and_keeps_earlier_checkpoints(
    saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = copy_run(saved, tmp_path)
    root = run / "run" / "checkpoints"
    before = _snapshot(root)
    real_open = ckpt._open_write

    def full_disk(path: Path) -> Any:  # the kernel's own ENOSPC: /dev/full refuses every write
        return open("/dev/full", "wb") if path.name == "optimizer.pt" else real_open(path)

    monkeypatch.setattr(ckpt, "_open_write", full_disk)
    t = trainer(run, total_steps=STEPS, resume=True)
    t.step = 3
    with pytest.raises(ckpt.CheckpointWriteError, match=r"no space left on device at .*step-000003\.tmp-\w+/optimizer\.pt"):
        t.save_checkpoint()
    assert _snapshot(root) == before  # no partial directory, `latest` and both checkpoints untouched


def test_unwritable_checkpoint_root_says_why(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ckpt.CheckpointWriteError, match=r"Could not write checkpoint: .* at .*file/checkpoints"):
        ckpt.save_checkpoint(blocker / "checkpoints", 1, model=model,
                             optimizer=torch.optim.SGD(model.parameters(), lr=0.1), trainer_state={})


# -- kill -9 and resume ------------------------------------------------------------------------------------
_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from deepgrpo_agent import checkpoint as ckpt
    from tests.fault.test_checkpoints import trainer
    out, steps, slow = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "slow-writes"
    if slow:  # widen the window between a checkpoint's files so the kill lands mid-write
        real = ckpt._save_file
        def slow_save(obj, path):
            entry = real(obj, path)
            (out / f"wrote-{path.parent.name.split('.')[0]}-{path.name}").touch()
            time.sleep(0.5)
            return entry
        ckpt._save_file = slow_save
    trainer(out, total_steps=steps, save_every=1, resume=True).train()
    """
)


def _child(out: Path, mode: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(out), str(STEPS), mode], env=env)


def _wait_for(path: Path, proc: subprocess.Popen[bytes], limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        assert proc.poll() is None, f"the child exited ({proc.returncode}) before {path} appeared"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_kill_9_at_a_random_moment_of_training_then_resume_is_bit_identical(
    tmp_path: Path, straight: dict[str, torch.Tensor]
) -> None:
    delay = random.Random().uniform(0.0, 1.5)
    proc = _child(tmp_path, "normal")
    try:
        _wait_for(tmp_path / "run" / "checkpoints" / "step-000001" / "COMPLETE", proc)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    t = resume_and_finish(tmp_path)
    assert t.step == STEPS
    assert_same(t.model, straight)


def test_kill_9_in_the_middle_of_a_checkpoint_write_then_resume_is_bit_identical(
    tmp_path: Path, straight: dict[str, torch.Tensor]
) -> None:
    killed_after = random.Random().choice(["model.pt", "optimizer.pt", "state.pt"])  # a random point of the write
    proc = _child(tmp_path, "slow-writes")
    try:
        _wait_for(tmp_path / f"wrote-step-000002-{killed_after}", proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    root = tmp_path / "run" / "checkpoints"
    assert list(root.glob("step-000002.tmp-*")), killed_after  # the kill did land inside the write of checkpoint 2
    assert not (root / "step-000002").exists()
    t = trainer(tmp_path, model_seed=123, total_steps=STEPS, resume=True)
    assert t.step == 1
    t.train()
    assert_same(t.model, straight)
    assert not list(root.glob("*.tmp-*"))  # the stale partial write was cleaned up
