"""``sessions schema``: the JSON Schema of the config file, built-in kinds' keys included.

Why generate it rather than ship a file: the supervision keys come from the pydantic
models in :mod:`sessions._config` and each kind's keys from its ``Options`` model, so
a generated schema can never drift from what ``sessions check`` accepts. Kinds are
imported to read their ``Options``; a kind whose module does not import (its driver
extra is missing) is left out, and the schema's description says so, since a
silently narrower schema would make an editor reject valid files with no hint why.

Per-kind keys are attached as JSON Schema ``if``/``then`` pairs on ``kind`` (draft
2020-12; also understood by draft-07 tools): VS Code's JSON language service and
Taplo (Even Better TOML) both offer completion and validation from them. A kind
whose ``Options`` forbids unknown keys gets ``additionalProperties: false`` for the
resource table (the supervision keys listed alongside), so a misspelt key is
underlined in the editor as ``sessions check`` would report it.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from sessions._config import ResourceConfig, SystemConfig
from sessions._errors import ConfigError
from sessions._runtime.kinds import BUILTIN_KINDS, resolve_kind
from sessions._tools.server import ServerConfig

__all__ = ["build_schema"]

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def build_schema() -> dict[str, Any]:
    """The JSON Schema of a ``sessions`` TOML config, as a JSON-ready dict."""
    schema = SystemConfig.model_json_schema()
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    schema["properties"]["server"] = _server_schema(defs)

    resource = defs["ResourceConfig"]
    supervision_keys = list(ResourceConfig.model_fields)
    rules: list[dict[str, Any]] = []
    described: list[str] = []
    skipped: list[str] = []
    for kind in BUILTIN_KINDS:
        try:
            cls = resolve_kind(kind)
        except ConfigError as err:
            skipped.append(f"{kind} ({err.errors[0][1]})")
            continue
        model = getattr(cls, "Options", None)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            skipped.append(f"{kind} (no Options model: its keys are not described)")
            continue
        try:
            options = _kind_schema(kind, model, defs)
        except Exception as err:  # a model pydantic cannot express as JSON Schema
            skipped.append(f"{kind} (its options have no JSON Schema: {err})")
            continue
        then: dict[str, Any] = {
            "properties": {
                **dict.fromkeys(supervision_keys, True),
                **options.get("properties", {}),
            },
        }
        if options.get("required"):
            then["required"] = options["required"]
        if options.get("additionalProperties") is False:
            then["additionalProperties"] = False
        if options.get("description"):
            then["description"] = options["description"]
        rules.append(
            {"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]}, "then": then}
        )
        described.append(kind)

    kind_prop = resource["properties"]["kind"]
    kind_prop["anyOf"] = [{"enum": list(BUILTIN_KINDS)}, {"type": "string"}]
    kind_prop["description"] = (
        f"Built-in kind ({', '.join(BUILTIN_KINDS)}), an entry point name of the group "
        "'sessions.resources', or 'package.module:Class'."
    )
    if rules:
        resource["allOf"] = rules

    notes = [f"Keys of the kinds {', '.join(described) or 'none'} are described."]
    if skipped:
        notes.append(
            "Not described (install the extra and regenerate): " + "; ".join(skipped) + "."
        )
    return {
        "$schema": DIALECT,
        "title": "sessions configuration",
        "description": "A sessions config file (TOML): supervisors, resources and the "
        "optional [server]. " + " ".join(notes),
        **{k: v for k, v in schema.items() if k not in ("title", "description")},
    }


def _server_schema(defs: dict[str, Any]) -> dict[str, Any]:
    server = ServerConfig.model_json_schema(ref_template="#/$defs/{model}")
    defs.update(server.pop("$defs", {}))
    return server


def _kind_schema(kind: str, model: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    """``model``'s schema with its own definitions renamed ``<kind>.<Model>`` so two
    kinds' ``$defs`` of the same name cannot collide."""
    prefix = f"{kind}."
    options = copy.deepcopy(model.model_json_schema(ref_template=f"#/$defs/{prefix}{{model}}"))
    for name, definition in options.pop("$defs", {}).items():
        defs[f"{prefix}{name}"] = definition
    return options
