"""pydantic's validation errors in the words of a config file.

Why a translator: pydantic locates an error by its *validation* path, which includes the
member of a union it tried (``timeout.pair``, ``verify.bool``,
``level.function-after[...]``), and words it for Python programmers ("Input should be a
valid tuple", "Value error, ...", "after validation"). A config file's user needs the
path of the key they wrote (``timeout``, list items as ``timeout[1]``) and what was
expected there (``expected a number > 0 or a list of 2 numbers, got 'x'``).

How: each error's location is walked against the data that was validated, so a part
that is a key (or index) of the user's data is kept and any other part (a union
member's tag) is dropped. The errors of a union are then judged together: if the value
has the shape of one form (a list for ``[connect, read]``), that form's problems are
reported; if it fits none, one line says which forms are accepted, read from the
model's JSON Schema.
"""

from __future__ import annotations

import difflib
import functools
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from sessions._redact import redact

__all__ = ["did_you_mean", "explain", "format_path", "show"]

Loc = tuple[int | str, ...]

#: Error types meaning "the value is not of this form at all" (inside a union: another
#: member may be the one meant).
_MISMATCH = frozenset({
    "bool_parsing", "bool_type", "bytes_type", "dataclass_type", "dict_type", "float_parsing",
    "float_type", "frozen_set_type", "int_parsing", "int_type", "is_instance_of",
    "iterable_type", "list_type", "literal_error", "mapping_type", "model_attributes_type",
    "model_type", "none_required", "set_type", "string_type", "tuple_type", "url_type",
    "enum", "int_from_float", "union_tag_invalid", "union_tag_not_found",
})

_NOUNS: dict[str, str] = {
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "bytes_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "frozen_set_type": "a list",
    "iterable_type": "a list",
    "dict_type": "a table",
    "mapping_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "dataclass_type": "a table",
    "url_type": "a URL",
    "none_required": "nothing",
}

_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
           "less_than_equal": "<="}

#: How pydantic names the members of a union it could not tag by a key of the data.
_INTERNAL_PART = re.compile(
    r"^(?:function-\w+|literal|constrained-\w+|lax-or-strict|json-or-python|is-instance|"
    r"is-subclass|chain|nullable|tagged-union|union|default|list|dict|tuple|set|frozenset|"
    r"str|int|float|bool|bytes|none|url|multi-host-url|decimal|date|datetime|model|"
    r"dataclass|typed-dict|enum)(?:\[.*\])?$"
)

_MISSING = object()

_FEW = re.compile(r"expected (\d+) items, got (\d+|fewer)")


def show(value: Any, limit: int = 80) -> str:
    """``repr(value)`` with passwords masked, cut to ``limit`` characters."""
    text = redact(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_path(parts: Iterable[int | str], prefix: str = "") -> str:
    """``resources.api.timeout[1]``: keys joined with dots, list items by index."""
    out = prefix
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _number(bound: Any) -> str:
    if isinstance(bound, float) and bound.is_integer():
        return str(int(bound))
    return str(bound)


def explain(exc: ValidationError, prefix: str = "", data: Any = _MISSING,
            model: type[BaseModel] | None = None) -> list[tuple[str, str]]:
    """``(path, message)`` for each problem ``exc`` found in ``data``.

    ``data`` is what was validated (to tell the user's keys from union members'
    tags); ``model`` is the model it was validated against (for the forms a union
    accepts and the keys an unknown key might have meant). Both are optional; without
    them the paths and messages are still free of pydantic's internals, only less
    specific.
    """
    parsed = [_Located(err, data, model) for err in exc.errors()]
    out: list[tuple[str, str]] = []
    done: set[int] = set()
    for i, item in enumerate(parsed):
        if i in done:
            continue
        if item.union is None:
            done.add(i)
            out.append(_plain(item, prefix, model))
            continue
        group = [j for j, other in enumerate(parsed)
                 if j not in done and other.union == item.union]
        done.update(group)
        out += _union(
            [parsed[j] for j in group], prefix, model, data
        )
    unique: list[tuple[str, str]] = []
    short: dict[str, tuple[int, int]] = {}  # path -> (index in unique, items needed)
    for path, message in out:
        few = _FEW.fullmatch(message)
        if few and path in short:  # one line per list, naming the length it needs
            i, need = short[path]
            need = max(need, int(few.group(1)))
            short[path] = (i, need)
            unique[i] = (path, f"expected {need} items, got {few.group(2)}")
            continue
        if few:
            short[path] = (len(unique), int(few.group(1)))
        if (path, message) not in unique:
            unique.append((path, message))
    return unique


class _Located:
    """One pydantic error with its location split into the user's keys and a union tag."""

    def __init__(self, err: Any, data: Any, model: type[BaseModel] | None) -> None:
        self.err = err
        self.type: str = err["type"]
        loc: Loc = tuple(err["loc"])
        real: list[int | str] = []
        self.union: tuple[int | str, ...] | None = None
        self.member: int | str | None = None
        cur = data
        for i, part in enumerate(loc):
            last = i == len(loc) - 1
            if cur is not _MISSING:
                if isinstance(cur, Mapping) and not isinstance(part, int) and part in cur:
                    real.append(part)
                    cur = cur[part]
                    continue
                if (isinstance(cur, (list, tuple)) and isinstance(part, int)
                        and 0 <= part < len(cur)):
                    real.append(part)
                    cur = cur[part]
                    continue
                if isinstance(part, int) or (last and self.type in ("missing",
                                                                    "extra_forbidden")) or (
                        isinstance(cur, Mapping) and model is not None
                        and part in _keys_at(model, real)):
                    real.append(part)
                    cur = _MISSING
                    continue
            elif isinstance(part, int) or not _INTERNAL_PART.match(part):
                real.append(part)
                continue
            if self.union is None:  # a union member's tag: not a key of the user's data
                self.union = tuple(real)
                self.member = part
        self.real: tuple[int | str, ...] = tuple(real)
        self.value = err.get("input")

    @property
    def at_member_top(self) -> bool:
        return self.union is not None and len(self.real) == len(self.union)


def _plain(item: _Located, prefix: str, model: type[BaseModel] | None) -> tuple[str, str]:
    real = item.real
    if item.type == "missing" and real and isinstance(real[-1], int):
        # an item of a fixed-length list (a [connect, read] pair) is missing
        need = real[-1] + 1
        given = item.err.get("input")
        got = len(given) if isinstance(given, (list, tuple)) else "fewer"
        return format_path(real[:-1], prefix), f"expected {need} items, got {got}"
    message = _describe(item)
    if item.type == "extra_forbidden" and model is not None and real:
        known = _keys_at(model, real[:-1])
        if known:
            message += did_you_mean(str(real[-1]), known)
    return format_path(real, prefix), message


def _union(items: list[_Located], prefix: str, model: type[BaseModel] | None,
           data: Any) -> list[tuple[str, str]]:
    members: dict[Any, list[_Located]] = {}
    for item in items:
        members.setdefault(item.member, []).append(item)
    meant = [m for m, errs in members.items()
             if not all(e.at_member_top and e.type in _MISMATCH for e in errs)]
    if meant:
        # the value has the shape of these forms: their problems are the ones to fix
        out = [_plain(e, prefix, model) for m in meant for e in members[m]]
        if len(meant) == 1 or len({path for path, _ in out}) == len(out):
            return out
    where = items[0].union or ()
    value = _value_at(data, where, items[0].value)
    forms = _forms(model, where) if model is not None else None
    if not forms:
        forms = []
        for item in items:
            noun = _literal_forms(item) if item.type == "literal_error" else _NOUNS.get(item.type)
            if noun and noun not in forms:
                forms.append(noun)
    expected = _either(forms) if forms else "another form"
    return [(format_path(where, prefix), f"expected {expected}, got {show(value)}")]


def _value_at(data: Any, where: Sequence[int | str], fallback: Any) -> Any:
    cur = data
    for part in where:
        try:
            cur = cur[part]
        except (KeyError, IndexError, TypeError):
            return fallback
    return fallback if cur is _MISSING else cur


def _either(forms: list[str]) -> str:
    if "a number" in forms and "an integer" in forms:
        forms = [f for f in forms if f != "an integer"]
    forms = [part for f in forms for part in (f.split(" or ") if f == "true or false" else [f])]
    if len(forms) <= 2:
        return " or ".join(forms)
    return ", ".join(forms[:-1]) + " or " + forms[-1]


def _literal_forms(item: _Located) -> str:
    expected = str((item.err.get("ctx") or {}).get("expected", ""))
    return expected.replace(" or ", ", ") if expected else "another value"


def _describe(item: _Located) -> str:
    """One plain sentence for one error, ending with the value given."""
    kind, ctx, value = item.type, item.err.get("ctx") or {}, item.value
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind in ("literal_error", "enum"):
        expected = str(ctx.get("expected", ""))
        options = ", ".join(re.findall(r"'([^']*)'", expected)) or expected
        return f"expected one of {options}, got {show(value)}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()), "?")
        return f"must be {_BOUNDS[kind]} {_number(bound)}, got {show(value)}"
    if kind == "multiple_of":
        return f"must be a multiple of {_number(ctx.get('multiple_of'))}, got {show(value)}"
    if kind == "finite_number":
        return f"expected a finite number, got {show(value)}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])  # our own validators say it all
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length" if kind == "too_short" else "max_length")
        most = "least" if kind == "too_short" else "most"
        got = ctx.get("actual_length")
        counted = f"{got} item{'s' if got != 1 else ''}" if got is not None else show(value)
        return f"expected at {most} {bound} item{'s' if bound != 1 else ''}, got {counted}"
    if kind in ("string_too_short", "string_too_long"):
        bound = ctx.get("min_length" if kind == "string_too_short" else "max_length")
        if kind == "string_too_short" and bound == 1:
            return f"must not be empty, got {show(value)}"
        most = "least" if kind == "string_too_short" else "most"
        return (f"must be at {most} {bound} character{'s' if bound != 1 else ''} long, "
                f"got {show(value)}")
    if kind == "string_pattern_mismatch":
        return f"must match the pattern {ctx.get('pattern')}, got {show(value)}"
    if kind == "is_instance_of":
        cls = ctx.get("class", "the right")
        return f"expected a {cls} object (given from Python, not a config file), got {show(value)}"
    if kind.startswith("url_"):
        reason = str(item.err.get("msg", "")).partition(", ")[2] or "invalid"
        return f"expected a URL ({reason}), got {show(value)}"
    if kind in _NOUNS:
        return f"expected {_NOUNS[kind]}, got {show(value)}"
    msg = str(item.err.get("msg", "invalid value"))
    for lead in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(lead)
    msg = msg.replace(" after validation", "")
    return f"{msg[:1].lower()}{msg[1:]}, got {show(value)}"


# -- what a model expects at a path ---------------------------------------------------


@functools.lru_cache(maxsize=64)
def _schema(model: type[BaseModel]) -> dict[str, Any] | None:
    try:
        return model.model_json_schema()
    except Exception:  # a type JSON Schema cannot express (an object set from Python)
        return None


def _forms(model: type[BaseModel], where: Sequence[int | str]) -> list[str]:
    """The forms the model accepts at ``where``, in words (``a number > 0``)."""
    schema = _schema(model)
    if schema is None:
        return []
    defs = schema.get("$defs", {})
    node: Any = schema
    for part in where:
        node = _deref(node, defs)
        if isinstance(part, int):
            prefix = node.get("prefixItems")
            if isinstance(prefix, list) and part < len(prefix):
                node = prefix[part]
            elif isinstance(node.get("items"), dict):
                node = node["items"]
            else:
                return []
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return []
    node = _deref(node, defs)
    members = node.get("anyOf") or node.get("oneOf") or [node]
    forms = [_form(_deref(m, defs), defs) for m in members]
    return [f for f in forms if f]


def _deref(node: Any, defs: Mapping[str, Any]) -> Any:
    while isinstance(node, Mapping) and "$ref" in node:
        node = defs.get(str(node["$ref"]).rsplit("/", 1)[-1], {})
    return node if isinstance(node, Mapping) else {}


def _form(node: Mapping[str, Any], defs: Mapping[str, Any], plural: bool = False) -> str:
    if "const" in node:
        return repr(node["const"])
    if "enum" in node:
        return "one of " + ", ".join(repr(v) for v in node["enum"])
    kind = node.get("type")
    if kind in ("number", "integer"):
        noun = ("numbers" if plural else "a number") if kind == "number" else (
            "integers" if plural else "an integer")
        for key, op in (("exclusiveMinimum", ">"), ("minimum", ">=")):
            if key in node:
                return f"{noun} {op} {_number(node[key])}"
        return noun
    if kind == "string":
        return "strings" if plural else "a string"
    if kind == "boolean":
        return "true or false"
    if kind == "object":
        return "tables" if plural else "a table"
    if kind == "array":
        prefix = node.get("prefixItems")
        if isinstance(prefix, list) and prefix:
            item = _form(_deref(prefix[0], defs), defs, plural=True)
            return f"a list of {len(prefix)} {item}" if item else "a list"
        items = node.get("items")
        item = _form(_deref(items, defs), defs, plural=True) if isinstance(items, dict) else ""
        return f"a list of {item}" if item else "a list"
    return ""


def _keys_at(model: type[BaseModel], where: Sequence[int | str]) -> list[str]:
    """The keys the model accepts in the table at ``where`` (for "did you mean")."""
    node: Any = model
    for part in where:
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            if field is None:
                return []
            node = field.annotation
        else:
            args = typing.get_args(node)
            origin = typing.get_origin(node)
            if origin in (dict, Mapping) and len(args) == 2:
                node = args[1]
            elif origin in (list, tuple, Sequence) and args:
                node = args[0]
            else:
                return []
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return [f.alias or name for name, f in node.model_fields.items()]
    return []


def _unwrap(node: Any) -> Any:
    """``Annotated[X, ...]`` -> X; ``X | None`` -> X (when one model is among the members)."""
    while True:
        origin = typing.get_origin(node)
        if origin is typing.Annotated:
            node = typing.get_args(node)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            models = [a for a in typing.get_args(node)
                      if isinstance(_unwrap(a), type) and issubclass(_unwrap(a), BaseModel)]
            if len(models) == 1:
                node = models[0]
                continue
        return node
