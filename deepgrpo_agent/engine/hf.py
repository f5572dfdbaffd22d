"""HFEngine: the transformers generation backend (one KV cache, prefill once, branch by cache expansion)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from deepgrpo_agent.engine.protocol import Completion, SamplingParams, generate_by_steps
from deepgrpo_agent.scoring import cache_keyword, restrict_vocab

__all__ = ["HFDecodeSession", "HFEngine"]


class HFEngine:
    """Generates with any transformers causal LM, dealing only in token ids.

    The engine holds a reference to the model it was given (normally the training model itself), so
    generation always sees the current weights; :meth:`sync_weights` copies weights only when handed
    a different module. Forward passes run under ``torch.inference_mode()`` and in eval mode (a model
    in training mode is switched to eval for each forward and back).

    Args:
        model: A transformers causal LM (``AutoModelForCausalLM``-style: takes ``input_ids``,
            ``attention_mask``, ``position_ids``, ``cache`` or ``past_key_values``; returns ``.logits``).
        vocab_size: Size of the action space; logits of ids ``>= vocab_size`` are dropped before the
            softmax (:func:`~deepgrpo_agent.scoring.restrict_vocab`), so they are never sampled and
            log-probs and entropies are those of the distribution over ids ``< vocab_size``, the
            one the loss scores (a model's embedding matrix is often padded past its tokenizer).
            Defaults to the model's output size.
        device: Where input tensors are placed; defaults to the device of the model's parameters.
            The engine never moves the model.
        dtype: Dtype to generate in. When it differs from the model's parameters (bf16 rollouts of an
            fp32-master model, docs/precision.md) the engine keeps its own copy of the model in ``dtype``
            and :meth:`sync_weights` refreshes it from the trained model (the trainer calls it after every
            update). None = generate with ``model`` itself, in its dtype.
        compact_threshold: Drop ended rows from the KV cache once they make up at least this fraction
            of the live batch (0 = as soon as one ends; None = never). Compaction copies the cache
            once; afterwards every step computes only the remaining rows.
    """

    request_level = False
    """Token-step engine: the rollout drives :meth:`start` sessions through the env step by step."""

    def __init__(
        self,
        model: Any,
        *,
        vocab_size: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        compact_threshold: float | None = 0.25,
    ) -> None:
        param = next(model.parameters(), None)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"Expected `dtype` to be a floating torch.dtype or None, got {dtype!r}.")
        if dtype is not None and param is not None and param.dtype != dtype:
            model = _inference_copy(model, dtype)
        self.model = model
        self.dtype = param.dtype if dtype is None and param is not None else dtype
        model_device = param.device if param is not None else torch.device("cpu")
        self.device = torch.device(device) if device is not None else model_device
        if param is not None and not _same_device(self.device, model_device):
            raise ValueError(
                f"Expected `device` to match the model's device {model_device}, got {self.device}; "
                f"move the model first (model.to({str(self.device)!r})) or leave `device` unset."
            )
        model_vocab = _output_size(model)
        if vocab_size is not None and (
            vocab_size < 1 or (model_vocab is not None and vocab_size > model_vocab)
        ):
            raise ValueError(
                f"Expected 1 <= `vocab_size` <= the model's {model_vocab} output logits, got {vocab_size}; "
                "pass the env's `single_action_space.n` or leave it unset."
            )
        if vocab_size is None and model_vocab is None:
            raise ValueError("Cannot tell the model's vocabulary size; pass `vocab_size=`.")
        self.vocab_size = int(vocab_size if vocab_size is not None else model_vocab)  # type: ignore[arg-type]
        if compact_threshold is not None and not 0.0 <= compact_threshold <= 1.0:
            raise ValueError(f"Expected 0 <= `compact_threshold` <= 1 or None, got {compact_threshold}.")
        self.compact_threshold = compact_threshold
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        # transformers >= 5.20 takes the KV cache as `cache=` (`past_key_values=` warns there).
        self._cache_kw = cache_keyword(model)

    def start(
        self,
        sequences: Sequence[npt.NDArray[np.int64]],
        params: SamplingParams,
        *,
        repeat: int = 1,
        temperatures: Sequence[float] | npt.NDArray[np.floating] | None = None,
    ) -> HFDecodeSession:
        """Prefills each sequence once (left-padded batch) and expands its cache to ``repeat`` rows.

        Args:
            sequences: Token ids to continue, one 1-D array per start sequence (lengths may differ).
            params: Sampling settings for the whole session.
            repeat: Copies of each sequence; row ``i * repeat + k`` is copy ``k`` of ``sequences[i]``.
            temperatures: Optional per-row temperatures, ``len(sequences) * repeat`` values > 0, that
                replace ``params.temperature`` for sampling, log-probs and entropies; None = the
                scalar temperature for every row.

        Returns:
            A session whose first :meth:`HFDecodeSession.sample` draws the first new token.
        """
        if not isinstance(repeat, (int, np.integer)) or repeat < 1:
            raise ValueError(f"Expected `repeat` to be an int >= 1, got {repeat!r}.")
        seqs = [np.asarray(s) for s in sequences]
        if not seqs:
            raise ValueError("Expected at least one start sequence, got none.")
        for i, s in enumerate(seqs):
            if s.ndim != 1 or s.shape[0] == 0 or not np.issubdtype(s.dtype, np.integer):
                raise ValueError(
                    f"Expected each sequence to be a non-empty 1-D array of token ids, got "
                    f"shape {s.shape} dtype {s.dtype} at index {i}."
                )
        row_temps = _row_temperatures(temperatures, len(seqs) * int(repeat))
        lengths = np.array([s.shape[0] for s in seqs], dtype=np.int64)
        width = int(lengths.max())
        ids = np.zeros((len(seqs), width), dtype=np.int64)
        mask = np.zeros((len(seqs), width + params.max_new_tokens), dtype=np.int64)
        for i, s in enumerate(seqs):
            ids[i, width - s.shape[0] :] = s  # left padding: every row's next token lands in one column
            mask[i, width - s.shape[0] : width] = 1
        dev = self.device
        ids_t = torch.from_numpy(ids).to(dev)
        mask_t = torch.from_numpy(mask).to(dev)
        with torch.inference_mode():
            prefix_mask = mask_t[:, :width]
            positions = (prefix_mask.cumsum(-1) - 1).clamp_(min=0)
            cache = _new_cache(self.model, width + params.max_new_tokens)
            # The LM head runs on the last position only. Kept as an index tensor, not `logits_to_keep=1`:
            # the int form hands the head a strided (B, 1, H) view of the hidden states, and torch's
            # CPU bf16 linear on a non-contiguous 3-D input expands the weight once per row (a
            # 56 MB copy per row for SmolLM2: 11 GB and minutes for a 200-row prefill); the indexed
            # form is a contiguous copy (docs/main_job.md, "Evaluation memory").
            last = torch.tensor([width - 1], device=dev)
            kwargs: dict[str, Any] = {"logits_to_keep": last} if self._keeps_logits else {}
            out = self._forward(
                input_ids=ids_t,
                attention_mask=prefix_mask,
                position_ids=positions,
                use_cache=True,
                **{self._cache_kw: cache},
                **kwargs,
            )
            logits = restrict_vocab(out.logits[:, -1], self.vocab_size).float()  # (B, V)
            lengths_t = torch.from_numpy(lengths).to(dev)
            if repeat > 1:
                # Branching: the prefix is computed once and its cache rows are copied, never re-decoded.
                cache.batch_repeat_interleave(int(repeat))
                logits = logits.repeat_interleave(int(repeat), dim=0)
                mask_t = mask_t.repeat_interleave(int(repeat), dim=0)
                lengths_t = lengths_t.repeat_interleave(int(repeat), dim=0)
        return HFDecodeSession(
            self, cache, logits, mask_t, width, lengths_t, params, prefilled_tokens=int(lengths.sum()),
            temperatures=None if row_temps is None else torch.from_numpy(row_temps).to(dev),
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
        """Whole completions from one :meth:`start` session (see :func:`~deepgrpo_agent.engine.protocol.generate_by_steps`)."""
        return generate_by_steps(self, sequences, params, repeat=repeat, temperatures=temperatures,
                                 stop_token_ids=stop_token_ids, max_tokens=max_tokens, generator=generator)

    def sync_weights(self, model: Any) -> None:
        """Makes the engine generate with ``model``'s weights (a no-op for the engine's own model); a
        model in another dtype is cast on the copy."""
        if model is self.model:
            return
        with torch.no_grad():
            dst = self.model.state_dict()
            src = model.state_dict()
            if dst.keys() != src.keys():
                self.model.load_state_dict(src)  # raises with the missing/unexpected keys
                return
            for key, value in src.items():
                target = dst[key]
                if target.data_ptr() != value.data_ptr():
                    target.copy_(value)

    def _forward(self, **kwargs: Any) -> Any:
        model = self.model
        if not model.training:
            return model(**kwargs)
        # Dropout must not act during generation; give the caller back the mode it chose.
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            return model(**kwargs)
        finally:
            for m, mode in modes:
                m.training = mode


class HFDecodeSession:
    """Batched incremental decoding over one shared KV cache (see :class:`~deepgrpo_agent.engine.protocol.DecodeSession`).

    Rows are *logical* (``num_rows`` of them, fixed); the cache holds only the *physical* rows that are
    still live after compaction. Once a row is passed as inactive to :meth:`advance` it has ended for
    good: it is never extended again and :meth:`sample` returns token 0, log-prob 0 and entropy 0 for it.

    Sampling draws one uniform number per logical row and step from the generator and inverts the
    row's CDF with it, so a row's tokens depend only on its logits and on its place in the random
    stream: compaction and other rows' endings never change them, and a session with the same rows,
    weights and generator state reproduces its tokens exactly. Greedy decoding draws nothing.

    With per-row ``temperatures`` each row's logits are divided by its own temperature (never greedy);
    without them the scalar ``params.temperature`` applies to every row.

    Attributes:
        num_rows: Number of logical rows.
        prefilled_tokens: Prompt tokens the prefill computed (each distinct sequence once).
        steps: Number of :meth:`advance` calls so far.
    """

    def __init__(
        self,
        engine: HFEngine,
        cache: Any,
        logits: torch.Tensor,
        mask: torch.Tensor,
        width: int,
        positions: torch.Tensor,
        params: SamplingParams,
        *,
        prefilled_tokens: int,
        temperatures: torch.Tensor | None = None,
    ) -> None:
        self.engine = engine
        self.params = params
        self.num_rows = int(logits.shape[0])
        self.prefilled_tokens = prefilled_tokens
        self.steps = 0
        self._cache = cache
        self._logits = logits  # (B, V) next-token logits of the physical rows
        self._mask = mask  # (B, width + max_new_tokens) attention mask buffer, filled up to _width
        self._width = width
        self._positions = positions  # (B,) position id of each physical row's next token
        self._rows = np.arange(self.num_rows)  # logical index of each physical row
        self._ended = np.zeros(self.num_rows, dtype=bool)  # logical
        self._device = engine.device
        self._temperatures = temperatures  # (num_rows,) float32 per logical row, or None = scalar

    @property
    def live_rows(self) -> int:
        """Rows the KV cache still holds (shrinks when ended rows are compacted away)."""
        return int(self._rows.shape[0])

    def sample(
        self, generator: torch.Generator | None = None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Draws the next token of every row.

        Log-probs and entropies are those of the temperature-scaled distribution before top-p; with
        temperature 0 (greedy) they are those of the unscaled logits.

        Args:
            generator: Source of randomness (any device); None uses torch's default generator.

        Returns:
            ``(tokens (R,), logprobs (R,), entropies (R,))``; zeros for ended rows.
        """
        temperature, top_p = self.params.temperature, self.params.top_p
        with torch.inference_mode():
            logits = self._logits
            if self._temperatures is not None:
                physical = torch.from_numpy(self._rows).to(self._device)
                logits = logits / self._temperatures[physical][:, None]  # (B, V) / (B, 1)
                temperature = 1.0  # any value > 0: sample, never greedy
            elif temperature > 0 and temperature != 1.0:
                logits = logits / temperature
            logp = torch.log_softmax(logits, dim=-1)  # (B, V)
            probs = logp.exp()
            entropy = -(probs * logp).sum(-1)  # (B,)
            if temperature == 0:
                tokens = logp.argmax(-1)
            else:
                # One uniform per logical row, drawn even for ended rows: keeps rows' streams aligned.
                gen_device = generator.device if generator is not None else self._device
                u = torch.rand(self.num_rows, generator=generator, device=gen_device, dtype=torch.float64)
                u = u.to(self._device)[torch.from_numpy(self._rows).to(self._device)]
                tokens = _inverse_cdf(probs, u, top_p)
            chosen = logp.gather(1, tokens[:, None])[:, 0]
            # One device-to-host copy; ids < 2**24 are exact in float32.
            packed = torch.stack([tokens.float(), chosen, entropy]).cpu().numpy()
        n = self.num_rows
        out_tokens = np.zeros(n, dtype=np.int64)
        out_logp = np.zeros(n, dtype=np.float32)
        out_ent = np.zeros(n, dtype=np.float32)
        rows, live = self._rows, ~self._ended[self._rows]
        out_tokens[rows[live]] = packed[0, live].astype(np.int64)
        out_logp[rows[live]] = packed[1, live]
        out_ent[rows[live]] = packed[2, live]
        return out_tokens, out_logp, out_ent

    def advance(self, tokens: npt.NDArray[np.int64], active: npt.NDArray[np.bool_]) -> None:
        """Feeds ``tokens`` (R,) to the rows in ``active`` (R,) and computes their next logits.

        Rows not in ``active`` end for good. Each call decodes one position with one forward pass over
        the live rows.

        Raises:
            ValueError: On wrong shapes, or when an ended row is passed as active again.
            RuntimeError: When called more than ``params.max_new_tokens`` times.
        """
        n = self.num_rows
        tokens = np.asarray(tokens)
        active = np.asarray(active, dtype=bool)
        if tokens.shape != (n,) or active.shape != (n,) or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(
                f"Expected integer `tokens` and bool `active` of shape ({n},), got {tokens.shape} "
                f"{tokens.dtype} and {active.shape}."
            )
        if (active & self._ended).any():
            rows = np.flatnonzero(active & self._ended).tolist()
            raise ValueError(
                f"Rows {rows} ended earlier and cannot be made active again; start a new session."
            )
        if self.steps >= self.params.max_new_tokens:
            raise RuntimeError(
                f"This session already decoded `max_new_tokens`={self.params.max_new_tokens} tokens; "
                "start a new session with a larger `max_new_tokens`."
            )
        self.steps += 1
        self._ended |= ~active
        alive = ~self._ended[self._rows]  # (B,) physical
        n_alive = int(alive.sum())
        if n_alive == 0:
            return
        dev = self._device
        with torch.inference_mode():
            threshold = self.engine.compact_threshold
            dead = alive.shape[0] - n_alive
            if dead and threshold is not None and dead >= threshold * alive.shape[0]:
                self._compact(alive)
                alive = alive[alive]
            alive_t = torch.from_numpy(alive).to(dev)
            self._mask[:, self._width] = alive_t
            self._width += 1
            input_ids = torch.from_numpy(tokens[self._rows]).to(dev)[:, None]
            out = self.engine._forward(
                input_ids=input_ids,
                attention_mask=self._mask[:, : self._width],
                position_ids=self._positions[:, None],
                use_cache=True,
                **{self.engine._cache_kw: self._cache},
            )
            self._positions += alive_t
            self._logits = restrict_vocab(out.logits[:, -1], self.engine.vocab_size).float()  # (B, V)

    def _compact(self, alive: npt.NDArray[np.bool_]) -> None:
        keep = torch.from_numpy(np.flatnonzero(alive)).to(self._device)
        self._cache.batch_select_indices(keep)
        self._mask = self._mask[keep]
        self._positions = self._positions[keep]
        self._rows = self._rows[alive]


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor, top_p: float) -> torch.Tensor:
    """Token ids drawn by inverting each row's CDF at ``u`` (B,), within the top-p nucleus."""
    vocab = probs.shape[-1]
    if top_p >= 1.0:
        cdf = probs.double().cumsum(-1)  # float64: float32 drifts over ~1e5 terms
        target = (u * cdf[:, -1])[:, None]
        return torch.searchsorted(cdf, target, right=True)[:, 0].clamp_(max=vocab - 1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    cdf = sorted_p.double().cumsum(-1)
    # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
    kept = (cdf - sorted_p.double()) < top_p
    cdf = (sorted_p.double() * kept).cumsum(-1)
    target = (u * cdf[:, -1])[:, None]
    idx = torch.searchsorted(cdf, target, right=True).clamp_(max=vocab - 1)
    return order.gather(1, idx)[:, 0]


def _row_temperatures(
    temperatures: Sequence[float] | npt.NDArray[np.floating] | None, rows: int
) -> npt.NDArray[np.float32] | None:
    """Checks per-row temperatures: ``rows`` finite values > 0, as float32 (None passes through)."""
    if temperatures is None:
        return None
    temps = np.asarray(temperatures, dtype=np.float64)
    if temps.shape != (rows,):
        raise ValueError(
            f"Expected one temperature per row (len(sequences) * repeat = {rows}), got shape {temps.shape}; "
            "repeat each sequence's temperature `repeat` times (np.repeat)."
        )
    if not (np.isfinite(temps) & (temps > 0)).all():
        raise ValueError(
            f"Expected per-row temperatures > 0 and finite, got {temps.tolist()}; use params.temperature=0 "
            "without `temperatures` for greedy decoding."
        )
    return temps.astype(np.float32)


def _inference_copy(model: Any, dtype: torch.dtype) -> Any:
    """A frozen eval-mode copy of ``model`` in ``dtype`` (tied weights stay tied)."""
    import copy

    clone = copy.deepcopy(model).to(dtype).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def _output_size(model: Any) -> int | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None)
    return int(size) if size is not None else None


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _new_cache(model: Any, capacity: int) -> Any:
    """A DynamicCache whose full-attention layers write into buffers of ``capacity`` positions.

    transformers' own DynamicLayer concatenates every new key/value onto the whole cache (copying it each
    step, quadratic in the length); preallocated layers write one column in place. Layers of other
    kinds (sliding window, linear attention) are kept as transformers made them.
    """
    config = getattr(model, "config", None)
    if config is None:
        return DynamicCache()
    cache = DynamicCache(config=config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [_PreallocatedLayer(capacity) for _ in cache.layers]
    return cache


class _PreallocatedLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A full-attention cache layer backed by ``(B, H, capacity, D)`` buffers; ``keys``/``values`` are views."""

    def __init__(self, capacity: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.capacity = int(capacity)
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        b, h, _, dk = key_states.shape
        self._kbuf = key_states.new_empty((b, h, self.capacity, dk))
        self._vbuf = value_states.new_empty((b, h, self.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self._kbuf.shape[-2]:
            self._grow(end)
        self._kbuf[:, :, self.length : end] = key_states
        self._vbuf[:, :, self.length : end] = value_states
        self.length = end
        self._refresh()
        return self.keys, self.values  # type: ignore[return-value]

    def _grow(self, needed: int) -> None:
        size = max(needed, 2 * self._kbuf.shape[-2])
        pad = size - self._kbuf.shape[-2]
        self._kbuf = torch.nn.functional.pad(self._kbuf, (0, 0, 0, pad))
        self._vbuf = torch.nn.functional.pad(self._vbuf, (0, 0, 0, pad))

    def _refresh(self) -> None:
        self.keys = self._kbuf[:, :, : self.length]
        self.values = self._vbuf[:, :, : self.length]

    def get_seq_length(self) -> int:
        return self.length

    def reset(self) -> None:
        self.length = 0
        self.keys = self.values = None
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"Expected a negative number of tokens to crop, got {tokens_to_remove}.")
        self.length = max(0, self.length + tokens_to_remove)
        if self.is_initialized:
            self._refresh()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._rebuild(lambda x: x.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._rebuild(lambda x: x[indices])

    def _rebuild(self, rows: Any) -> None:
        # Copies only the filled positions; the free capacity need not be moved.
        for name in ("_kbuf", "_vbuf"):
            old = getattr(self, name)
            filled = rows(old[:, :, : self.length])
            new = old.new_empty((filled.shape[0], *old.shape[1:]))
            new[:, :, : self.length] = filled
            setattr(self, name, new)
        self._refresh()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)
