"""Ray for deepgrpo: connecting to a cluster, and the comparison runner that fans runs out over it.

Ray is an optional dependency (``pip install 'deepgrpo[ray]'``) and is imported only when one of
these functions runs. Two things use it:

- :class:`RayRunner`: ``deepgrpo compare --ray [ADDRESS]`` runs every (strategy, seed) of a
  comparison as one Ray task (:func:`deepgrpo_agent.compare.run_one` on the worker), with the
  same run directories, resume and tables as the local runner (:mod:`deepgrpo_agent.compare`
  owns all of that; a runner only decides where :func:`~deepgrpo_agent.compare.run_one` executes).
- :mod:`deepgrpo_agent.rollout_workers`: rollout workers of one training run (``rollout_workers=N``).

:func:`connect` starts a local cluster (bound to the loopback interface only) unless it is given
the address of a running one: ``"auto"`` (the cluster ``ray start --head`` started on this
machine) or ``"ray://HOST:10001"`` (Ray Client).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

INSTALL_HINT = "pip install 'deepgrpo[ray]'  (or: pip install 'ray>=2.30')"
"""How to get Ray, quoted by every error that needs it."""

LOCAL = "local"
"""``address`` value (the default) that starts a private cluster on this machine."""


def require_ray(what: str = "This feature") -> Any:
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(f"{what} needs Ray, which is not installed: {INSTALL_HINT}.") from e
    return ray


def ray_available() -> bool:
    """True when ``import ray`` works."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> Any:
    """Connects this process to Ray (once) and returns the ``ray`` module.

    Args:
        address: None, ``""`` or ``"local"`` start a private local cluster (loopback only, no
            dashboard); ``"auto"`` joins the cluster running on this machine; ``"ray://HOST:PORT"``
            connects through Ray Client; ``"HOST:PORT"`` joins a cluster's GCS directly.
        num_cpus: CPUs of a local cluster (default: all of this machine's); ignored otherwise.
        num_gpus: GPUs of a local cluster (default: Ray's detection); ignored otherwise.

    If Ray is already initialized (e.g. by your own ``ray.init``) it is used as it is.

    Raises:
        ImportError: If Ray is not installed.
        ValueError: If ``address`` is not one of the forms above.
    """
    ray = require_ray("Running on Ray")
    if ray.is_initialized():
        return ray
    if address in (None, "", LOCAL):
        # Ray binds a local node to the machine's reachable IP on Linux; this keeps every server on
        # 127.0.0.1 (Ray's own switch for single-machine clusters on macOS/Windows).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        kwargs: dict[str, Any] = {"include_dashboard": False}
        if num_cpus is not None:
            kwargs["num_cpus"] = int(num_cpus)
        if num_gpus is not None:
            kwargs["num_gpus"] = int(num_gpus)
        ray.init(**kwargs)
        return ray
    ray.init(address=check_address(address))
    return ray


def check_address(address: str | None) -> str:
    """``address`` if it has one of the forms :func:`connect` accepts (None and ``""`` become ``"local"``).

    Raises:
        ValueError: Otherwise, naming the forms.
    """
    if address in (None, ""):
        return LOCAL
    if not isinstance(address, str) or not (
        address in (LOCAL, "auto") or address.startswith("ray://") or ":" in address
    ):
        raise ValueError(
            f"Expected a Ray address: 'local' (start a cluster here), 'auto' (the running cluster on this "
            f"machine), 'ray://HOST:10001' (Ray Client) or 'HOST:6379', got {address!r}."
        )
    return address


# -- the comparison runner ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RayRunner:
    """Runs each (strategy, seed) of a comparison as one Ray task.

    A runner yields ``(index, record, seconds)`` as runs finish (see
    :func:`deepgrpo_agent.compare.run_comparison`, which stores, prints and tabulates them exactly as
    for the local runner). The task calls :func:`~deepgrpo_agent.compare.run_one`, which writes the
    run directory (checkpoints, ``result.json``) where the task runs: on a multi-node cluster
    ``output_dir`` must be a path every node shares (NFS, a mounted bucket) for a cut sweep to resume.

    Attributes:
        address: Where to run (see :func:`connect`); ``"local"`` starts a cluster on this machine.
        cpus_per_run: CPUs each run asks Ray for; its torch uses that many threads.
        gpus_per_run: GPUs each run asks Ray for (fractions share one GPU); the run's trainer uses
            CUDA when its config's ``device`` is ``"auto"`` and Ray gave it a GPU.
        num_cpus: CPUs of a local cluster (None: all of this machine's).
    """

    address: str = LOCAL
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        check_address(self.address)
        if not self.cpus_per_run > 0:
            raise ValueError(f"Expected `cpus_per_run` > 0, got {self.cpus_per_run}.")
        if not self.gpus_per_run >= 0:
            raise ValueError(f"Expected `gpus_per_run` >= 0, got {self.gpus_per_run}.")

    def describe(self) -> str:
        return (f"Ray ({self.address}), {self.cpus_per_run:g} CPU"
                + (f" + {self.gpus_per_run:g} GPU" if self.gpus_per_run else "") + " per run")

    def run(self, cfg: Any, runs: Sequence[tuple[int, str, int]]) -> Iterator[tuple[int, dict[str, Any], float]]:
        """Submits every run, then yields ``(index, record, seconds)`` in the order they finish.

        Args:
            cfg: The :class:`~deepgrpo_agent.compare.CompareConfig` (sent to the tasks as plain data).
            runs: ``(index, strategy, seed)`` of each run still to do.
        """
        from deepgrpo_agent.config import to_dict

        ray = connect(self.address, num_cpus=self.num_cpus)
        task = ray.remote(_remote_run).options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                                               max_retries=0)
        values, cwd = to_dict(cfg), os.getcwd()
        threads = max(1, int(self.cpus_per_run))
        pending = {task.remote(values, strategy, seed, threads, cwd): index for index, strategy, seed in runs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready[0])
            record, seconds = ray.get(ready[0])
            yield index, record, float(seconds)


def _remote_run(values: dict[str, Any], strategy: str, seed: int, threads: int, cwd: str) -> tuple[dict[str, Any], float]:
    """The body of one comparison task: rebuild the config, train (or resume) the run, return its record."""
    import torch

    from deepgrpo_agent.compare import CompareConfig, run_one
    from deepgrpo_agent.config import from_dict

    if os.path.isdir(cwd):  # relative output dirs mean the same place as on the driver (same machine)
        os.chdir(cwd)
    torch.set_num_threads(threads)
    cfg = from_dict(CompareConfig, values)
    t0 = time.perf_counter()
    record = run_one(cfg, strategy, seed)
    return record, time.perf_counter() - t0


__all__ = ["INSTALL_HINT", "LOCAL", "RayRunner", "check_address", "connect", "ray_available", "require_ray"]
