"""Offline validation of STAC Items and Collections against vendored JSON Schemas.

The schemas live in ``stac_schemas/``, laid out by the URL they are published at
(``stac_schemas/<host>/<path>`` is ``https://<host>/<path>``). Every ``$ref`` resolves
against those files; a reference to anything not shipped raises :class:`SchemaNotShipped`
instead of going to the network.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError
from jsonschema_specifications import REGISTRY as METASCHEMAS
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT7

_CORE = {
    "Feature": "item-spec/json-schema/item.json",
    "Collection": "collection-spec/json-schema/collection.json",
    "Catalog": "catalog-spec/json-schema/catalog.json",
}
_MAX_ERRORS = 5
_MAX_MESSAGE = 300


class SchemaNotShipped(LookupError):
    """A schema URL (core, extension or ``$ref`` target) has no vendored copy."""

    def __init__(self, url: str) -> None:
        self.url = url
        shipped = "\n  ".join(shipped_schemas())
        super().__init__(f"STAC schema {url!r} is not shipped with eoforge (no network fetch). Shipped:\n  {shipped}")


class StacValidationError(ValueError):
    """A STAC object does not conform to one of its schemas."""

    def __init__(self, object_id: str, schema_url: str, messages: list[str]) -> None:
        self.object_id = object_id
        self.schema_url = schema_url
        self.messages = messages
        details = "\n  ".join(messages)
        super().__init__(f"STAC object {object_id!r} is invalid against {schema_url}:\n  {details}")


def _walk(node: Traversable, prefix: str) -> dict[str, Traversable]:
    out: dict[str, Traversable] = {}
    for child in node.iterdir():
        path = f"{prefix}/{child.name}" if prefix else child.name
        if child.is_dir():
            out.update(_walk(child, path))
        elif child.name.endswith(".json"):
            out[f"https://{path}"] = child
    return out


@cache
def _schema_files() -> dict[str, Traversable]:
    return _walk(files("eoforge.predict") / "stac_schemas", "")


def _refuse(uri: str) -> Resource:
    """Registry ``retrieve`` hook: nothing is ever downloaded."""
    raise NoSuchResource(ref=uri)


@cache
def _registry() -> Registry:
    pairs: list[tuple[str, Resource]] = []
    for url, path in _schema_files().items():
        resource = Resource.from_contents(json.loads(path.read_text("utf-8")), default_specification=DRAFT7)
        pairs.append((url, resource))
        declared = resource.id()
        if declared and declared != url:  # e.g. stac-spec v1.1.0 common.json declares ".../commonjson"
            pairs.append((declared, resource))
    return Registry(retrieve=_refuse).with_resources(pairs).combine(METASCHEMAS).crawl()


def shipped_schemas() -> list[str]:
    """List the schema URLs that can be validated against offline.

    Returns:
        Sorted URLs of every vendored schema (core, extensions and their ``$ref`` targets).
    """
    return sorted(_schema_files())


def _core_url(obj: dict[str, Any]) -> str:
    kind = obj.get("type")
    if kind not in _CORE:
        raise StacValidationError(
            str(obj.get("id", "<no id>")), "(none)", [f"'type' is {kind!r}, not one of {list(_CORE)}"]
        )
    return f"https://schemas.stacspec.org/v{obj.get('stac_version')}/{_CORE[kind]}"


def _format(error: ValidationError) -> str:
    message = error.message if len(error.message) <= _MAX_MESSAGE else error.message[:_MAX_MESSAGE] + "…"
    return f"at {error.json_path}: {message}"


def _leaves(error: ValidationError) -> list[ValidationError]:
    """The innermost errors of a ``oneOf``/``anyOf``, from the branch that got deepest into the object."""
    if not error.context:
        return [error]
    branches: dict[object, list[ValidationError]] = {}
    for sub in error.context:
        branch = sub.relative_schema_path[0] if sub.relative_schema_path else None
        branches.setdefault(branch, []).extend(_leaves(sub))
    return max(branches.values(), key=lambda leaves: max(len(e.absolute_path) for e in leaves))


def _messages(errors: list[ValidationError]) -> list[str]:
    leaves = sorted((leaf for error in errors for leaf in _leaves(error)), key=lambda e: -len(e.absolute_path))
    out: list[str] = []
    for leaf in leaves:  # deepest first: errors inside the object beat "wrong branch" ones such as $.type
        line = _format(leaf)
        if line not in out:
            out.append(line)
        if len(out) == _MAX_ERRORS:
            break
    return out


def validate_stac(obj: dict[str, Any]) -> None:
    """Validate a STAC Item, Collection or Catalog dict offline.

    The object is checked against the core schema for its ``type`` and ``stac_version``,
    then against every URL in its ``stac_extensions``, all from the vendored copies.

    Args:
        obj: The STAC object as a JSON-compatible dict (e.g. ``item.to_dict()``).

    Raises:
        SchemaNotShipped: The core schema, an extension schema, or a schema one of them
            references is not vendored; nothing is fetched over the network.
        StacValidationError: The object does not conform; the message names the object id,
            the schema URL and the first few errors with their JSON paths.
    """
    object_id = str(obj.get("id", "<no id>"))
    urls = [_core_url(obj), *(str(u).rstrip("#") for u in obj.get("stac_extensions") or [])]
    shipped = _schema_files()
    missing = [u for u in urls if u not in shipped]
    if missing:
        raise SchemaNotShipped(missing[0])
    registry = _registry()
    for url in urls:
        schema = registry.contents(url)
        validator_cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
        validator = validator_cls(schema, registry=registry)
        try:
            errors = list(validator.iter_errors(obj))
        except Unresolvable as exc:
            raise SchemaNotShipped(str(getattr(exc, "ref", exc))) from exc
        if errors:
            raise StacValidationError(object_id, url, _messages(errors))
