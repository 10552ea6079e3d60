"""Settings dataclasses as command-line flags: a field ``emb_dim`` is the flag ``--emb-dim``, its help is the
text :func:`setting` gives it, and a flag's string (or a ``--config`` file's value) becomes a value of the
field's type here, in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

__all__ = [
    "add_flags", "coerce", "field_types", "flag", "is_int", "require", "require_at_least_or_none", "require_positive",
    "setting",
]  # fmt: skip

_HELP = "help"


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with its flag's help text: ``emb_dim: int = setting(128, "Width of the residual stream.")``."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={_HELP: help})
    return dataclasses.field(default=default, metadata={_HELP: help})


def flag(name: str) -> str:
    """The command-line flag of a field: ``"emb_dim"`` -> ``"--emb-dim"``."""
    return "--" + name.replace("_", "-")


def is_int(value: Any) -> bool:
    """An int that is not a bool (``True`` is an int to Python, never a size to a run)."""
    return isinstance(value, int) and not isinstance(value, bool)


def require(ok: bool, name: str, what: str, settings: Any) -> None:
    """Refuse a setting where it is made, naming its flag: ``--batch-size must be a positive integer, got 0``."""
    if not ok:
        raise ValueError(f"{flag(name)} must be {what}, got {getattr(settings, name)!r}")


def require_positive(settings: Any, *names: str) -> None:
    """Refuse any of the fields ``names`` of ``settings`` that is not a positive integer."""
    for name in names:
        require(is_int(getattr(settings, name)) and getattr(settings, name) >= 1, name, "a positive integer", settings)


def require_at_least_or_none(settings: Any, low: int, *names: str) -> None:
    """Refuse any of the optional integer fields ``names`` of ``settings`` that is set and below ``low``."""
    for name in names:
        value = getattr(settings, name)
        require(value is None or (is_int(value) and value >= low), name, f"an integer >= {low}", settings)


def field_types(cls: type) -> dict[str, Any]:
    """The type hint of each field of the dataclass ``cls``, by name."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _kind(hint: Any) -> tuple[type, bool, bool]:
    """``(scalar type, accepts None, is a list)`` of a field's type hint."""
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], False, True
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True, False
    return hint, False, False


_TRUE, _FALSE, _NONE = ("true", "yes", "1", "on"), ("false", "no", "0", "off"), ("none", "null", "")


def _scalar(kind: type, value: Any, optional: bool) -> Any:
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("expected true or false")
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("expected an integer")
        return int(value)  # "12" from a flag or a YAML string; int(12.0) from JSON
    if kind is float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        return float(value)  # also YAML's "1e-3", which YAML 1.1 reads as a string
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def coerce(name: str, hint: Any, value: Any, source: str) -> Any:
    """Convert a flag's string or a config file's value to the type ``hint`` of field ``name``.

    Raises:
        ValueError: naming ``source`` (the flag or the file), the key and the value.
    """
    kind, optional, is_list = _kind(hint)
    try:
        if is_list:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise ValueError("expected a list")
            return [_scalar(kind, item, False) for item in items]
        return _scalar(kind, value, optional)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: bad value {value!r} for {name} ({flag(name)}): {err}") from None


def _converter(name: str, hint: Any) -> Callable[[str], Any]:
    is_list = _kind(hint)[2]

    def convert(text: str) -> Any:  # argparse calls it once per item of a list flag
        try:
            value = coerce(name, hint, [text] if is_list else text, flag(name))
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value[0] if is_list else value

    convert.__name__ = name
    return convert


def _help_text(field: dataclasses.Field, default: Any, note: str | None = None) -> str:
    """The field's help (or ``note``), and its default unless that says nothing (None, [], False) or the help
    names it."""
    text = note or " ".join(field.metadata.get(_HELP, "").split())
    if default not in (None, [], False) and "(default:" not in text:
        text += f" (default: {default!r})"
    return text.replace("%", "%%")


def add_flags(group: argparse._ActionsContainer, cls: type, defaults: dict[str, Any] | None = None,
              skip: tuple[str, ...] = (), notes: dict[str, str] | None = None) -> None:
    """Add a flag for each field of the dataclass ``cls`` (except ``skip``) to an argparse parser or group.

    Flags are added with ``default=argparse.SUPPRESS`` so that an unset flag is absent from the result
    and never overrides a value from a lower level (a recipe, a file). ``defaults`` are the values shown
    in the help (the fields' own defaults when not given); ``notes`` replace a field's help where a command
    gives it another meaning.
    """
    hints = field_types(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        shown = (defaults or {}).get(field.name, field.default)
        help_text = _help_text(field, None if shown is dataclasses.MISSING else shown, (notes or {}).get(field.name))
        kind, _, is_list = _kind(hints[field.name])
        if kind is bool:
            group.add_argument(flag(field.name), action=argparse.BooleanOptionalAction, help=help_text,
                               default=argparse.SUPPRESS)
        else:
            group.add_argument(flag(field.name), type=_converter(field.name, hints[field.name]),
                               nargs="+" if is_list else None, metavar=field.name.upper(), help=help_text,
                               default=argparse.SUPPRESS)
