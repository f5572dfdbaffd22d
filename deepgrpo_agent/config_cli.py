"""A command line generated from a config dataclass: one flag per field, YAML config files, YAML dumps.

Precedence, lowest first: the dataclass defaults, then the YAML file given with ``--config``, then the
flags given on the command line. Flag syntax by field type:

- ``bool``: ``--flag`` / ``--no-flag``.
- ``Literal[...]``: one of the listed choices.
- ``X | None``: a value of X, or ``none`` for None.
- ``tuple[...]`` / ``list[...]``: space-separated values (``--adam-betas 0.9 0.95``).
- ``dict``: a JSON object (``--env-kwargs '{"prompt": "plain"}'``); it replaces the file's value.
"""

from __future__ import annotations

import argparse
import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from deepgrpo_agent.config import (
    coerce_value,
    describe_type,
    field_docs,
    field_types,
    from_dict,
    own_fields,
    to_dict,
)

T = TypeVar("T")

_NONE_WORDS = ("none", "null")


def _show(value: Any) -> str:
    """A default as one would type it on the command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return " ".join(_show(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _text_parser(tp: Any, name: str) -> Callable[[str], Any]:
    """An argparse ``type=`` function parsing one command-line word as ``tp``."""
    nullable = type(None) in get_args(tp)

    def parse(text: str) -> Any:
        if nullable and text.lower() in _NONE_WORDS:
            return None
        try:
            return coerce_value(text, tp, name=name, parse_text=True)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e

    parse.__name__ = describe_type(tp)  # argparse names the type in its "invalid value" message
    return parse


def _metavar(tp: Any) -> str:
    options = [a for a in get_args(tp) if a is not type(None)]
    if get_origin(tp) is not Literal and len(options) == 1 and type(None) in get_args(tp):
        return _metavar(options[0]) + "|none"
    if get_origin(tp) is dict or tp is dict:
        return "JSON"
    return {int: "INT", float: "FLOAT", str: "STR", bool: "BOOL"}.get(tp, "VALUE")


def _add_field(group: Any, name: str, tp: Any, default: Any, doc: str) -> None:
    flag = "--" + name.replace("_", "-")
    text = (doc or describe_type(tp)).replace("%", "%%")  # argparse %-formats help strings
    shown = _show(default) if default is not None else "none"
    kwargs: dict[str, Any] = {"dest": name, "help": f"{text} (default: {shown.replace('%', '%%')})"}
    origin, args = get_origin(tp), get_args(tp)
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is Literal:
        kwargs.update(choices=list(args), type=_text_parser(tp, name))
    elif origin in (tuple, list):
        fixed = origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis)
        element = args[0] if args else Any
        kwargs.update(
            nargs=len(args) if fixed else "*", type=_text_parser(element, name), metavar=_metavar(element)
        )
    else:
        kwargs.update(type=_text_parser(tp, name), metavar=_metavar(tp))
    group.add_argument(flag, **kwargs)


def _defaults(cls: type) -> dict[str, Any]:
    """Field defaults, from an instance so that default factories and ``__post_init__`` apply."""
    try:
        return to_dict(cls())
    except (TypeError, ValueError):  # a config with required fields: show what the dataclass declares
        return {}


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``deepgrpo: error: ...`` (exit status 2)."""

    def error(self, message: str) -> Any:  # argparse's signature is NoReturn
        prog = self.prog or "deepgrpo"
        name = prog if prog.startswith("deepgrpo") else "deepgrpo"
        self.exit(2, f"deepgrpo: error: {' '.join(message.split())} (see `{name} --help`)\n")


def build_parser(cls: type, *, prog: str | None = None) -> argparse.ArgumentParser:
    """An ``argparse`` parser with one ``--flag`` per field of the config dataclass ``cls``.

    Each flag's help is the field's docstring plus its default; fields are grouped by the class that
    declares them (``GRPOConfig`` options, then a subclass's own). Flags not given are left out of
    the parsed namespace, so that a YAML file's values are only overridden by flags actually given.

    Args:
        cls: A config dataclass such as :class:`deepgrpo_agent.config.GRPOConfig`.
        prog: Program name shown in the usage line.

    Returns:
        The parser; it also has ``--config FILE.yaml``.
    """
    description = inspect.cleandoc(cls.__doc__ or "")
    parser = OneLineParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="YAML file of field values (keys as the field names); flags given here override it.",
    )
    docs, types_, defaults = field_docs(cls), field_types(cls), _defaults(cls)
    for klass, names in own_fields(cls).items():
        group = parser.add_argument_group(f"{klass.__name__} options")
        for name in names:
            _add_field(group, name, types_[name], defaults.get(name), docs[name])
    return parser


def _load_yaml(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        parser.error(f"Cannot read --config {path}: {e}")
    except yaml.YAMLError as e:
        parser.error(f"--config {path} is not valid YAML: {e}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        parser.error(
            f"Expected --config {path} to hold a mapping of field: value, got a {type(data).__name__}."
        )
    return data


def parse_config(cls: type[T], argv: Sequence[str] | None = None, *, prog: str | None = None) -> T:
    """Builds a validated config from command-line arguments (and an optional ``--config`` YAML file).

    Flags given on the command line override the file, which overrides the defaults. Any user error
    (unknown flag or YAML key, ill-typed or invalid value) exits through ``argparse`` with status 2 and
    a message naming the field, the value and the fix; unknown keys come with close field names.

    Args:
        cls: The config dataclass.
        argv: Arguments without the program name; None = ``sys.argv[1:]``.
        prog: Program name shown in the usage line.

    Returns:
        The config.
    """
    parser = build_parser(cls, prog=prog)
    given = vars(parser.parse_args(argv))
    path = given.pop("config", None)
    values: dict[str, Any] = {}
    where = ""
    if path is not None:
        values.update(_load_yaml(path, parser))
        where = f" (in --config {path})"
    values.update(given)
    try:
        return from_dict(cls, values, where=where)
    except ValueError as e:
        parser.error(str(e))


def dump_yaml(cfg: Any, path: str | Path) -> None:
    """Writes ``cfg`` as a YAML file that :func:`parse_config` reads back (``--config path``).

    Every field is written, each under its docstring as a comment.

    Raises:
        ValueError: If a value cannot be written as plain YAML (e.g. a tokenizer object inside
            ``env_kwargs``); pass such objects in Python instead.
    """
    docs = field_docs(type(cfg))
    lines = [
        f"# {type(cfg).__name__}: use with `--config {Path(path).name}`; command-line flags override it.",
        "",
    ]
    for name, value in to_dict(cfg).items():
        try:
            text = yaml.safe_dump(
                {name: value}, sort_keys=False, default_flow_style=False, allow_unicode=True
            )
        except yaml.YAMLError as e:
            raise ValueError(
                f"Expected plain values (numbers, strings, lists, mappings) to write `{name}` to YAML, got "
                f"{value!r}. Pass such objects to the config in Python instead of through a file."
            ) from e
        lines += [f"# {line}".rstrip() for line in docs[name].splitlines()]
        lines += [text.rstrip("\n"), ""]
    Path(path).write_text("\n".join(lines))
