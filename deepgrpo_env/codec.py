"""Token codecs: the small tokenizer interface the environments need, over transformers or our own."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

# Special tokens that end an assistant turn in common chat templates; any that exist in a vocabulary
# are stop tokens by default, so a chat model that closes its turn ends the episode.
_COMMON_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>")


@runtime_checkable
class Codec(Protocol):
    """What an environment needs from a tokenizer.

    Attributes:
        vocab_size: Size of the action space (token ids are ``0 .. vocab_size - 1``).
        pad_token_id: Id written into the padding of fixed-shape observations.
        stop_token_ids: Ids that end an episode when emitted (EOS and end-of-turn tokens).
    """

    vocab_size: int
    pad_token_id: int
    stop_token_ids: tuple[int, ...]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens added."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` with special tokens removed."""
        ...

    def chat_prompt(self, user: str, system: str | None = None) -> list[int]:
        """Token ids of a one-turn chat prompt ending where the assistant starts to speak."""
        ...

    def fingerprint(self) -> str:
        """A short stable hash identifying the vocabulary and template."""
        ...


def _digest(payload: Any) -> str:
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


class HFCodec:
    """Adapts any transformers tokenizer to :class:`Codec`.

    Args:
        tokenizer: A ``PreTrainedTokenizerBase`` (fast or slow).
        vocab_size: Override the action-space size, e.g. to match a model whose embedding matrix is
            padded beyond the tokenizer's vocabulary. Defaults to ``len(tokenizer)``.
        stop_token_ids: Override the stop tokens. Defaults to EOS plus common end-of-turn tokens
            present in the vocabulary.
        use_chat_template: Wrap prompts in the tokenizer's chat template when it has one.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        vocab_size: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        use_chat_template: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        n = len(tokenizer)
        if vocab_size is not None and vocab_size < n:
            raise ValueError(
                f"Expected `vocab_size` >= the tokenizer's {n} tokens, got {vocab_size}; "
                "leave it unset to use the tokenizer's size."
            )
        self.vocab_size = int(vocab_size or n)
        if stop_token_ids is None:
            vocab = tokenizer.get_vocab()
            found = {vocab[t] for t in _COMMON_STOP_TOKENS if t in vocab}
            if tokenizer.eos_token_id is not None:
                found.add(int(tokenizer.eos_token_id))
            stop_token_ids = sorted(found)
        if not stop_token_ids:
            raise ValueError(
                "The tokenizer has no EOS token and no known end-of-turn token; pass "
                "`stop_token_ids=[...]` to say which ids end an episode."
            )
        self.stop_token_ids = tuple(int(i) for i in stop_token_ids)
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else self.stop_token_ids[0])
        self.use_chat_template = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self._fingerprint: str | None = None

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def chat_prompt(self, user: str, system: str | None = None) -> list[int]:
        if not self.use_chat_template:
            text = (system + "\n\n" if system else "") + user + "\n"
            return self.encode(text)
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.encode(text)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            tok = self.tokenizer
            vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
            self._fingerprint = _digest(
                {
                    "vocab": _digest(vocab),
                    "template": getattr(tok, "chat_template", None) if self.use_chat_template else None,
                    "vocab_size": self.vocab_size,
                    "stop": self.stop_token_ids,
                    "pad": self.pad_token_id,
                }
            )
        return self._fingerprint

    def __repr__(self) -> str:
        name = getattr(self.tokenizer, "name_or_path", type(self.tokenizer).__name__)
        return f"HFCodec({name!r}, vocab_size={self.vocab_size})"


def as_codec(tokenizer: Any, **kwargs: Any) -> Codec:
    """Returns ``tokenizer`` as a :class:`Codec`: codecs pass through, transformers tokenizers are wrapped.

    Raises:
        TypeError: If ``tokenizer`` is neither.
    """
    if isinstance(tokenizer, Codec) and not kwargs:
        return tokenizer
    if hasattr(tokenizer, "get_vocab") and hasattr(tokenizer, "encode"):
        return HFCodec(tokenizer, **kwargs)
    raise TypeError(
        f"Expected a transformers tokenizer or a deepgrpo_env.codec.Codec, got {type(tokenizer).__name__}; "
        "pass e.g. `tokenizer=AutoTokenizer.from_pretrained(local_dir)`."
    )
