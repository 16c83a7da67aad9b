"""Shared pieces of every config kind: base model, value types, YAML, overrides, error lines.

The strict base model, value types, ``${VAR}`` expansion, YAML reading, ``--set`` overrides
and error formatting.

Path-valued fields may use ``${VAR}`` (expanded from the environment, e.g. ``${EOFORGE_HOME}``);
an unset variable is an error. Relative paths are resolved against the current directory
of the process that loads the config. A path, URL or tracking URI that embeds credentials
(``user:password@``, a signature or token in its query), written out or expanded from a variable,
is refused (:func:`refuse_credentials`): credentials stay in the environment. This module imports
only pydantic and yaml.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eoforge.errors import ConfigError
from eoforge.redact import embedded_credentials

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_vars(value: str) -> str:
    """Expand ``${VAR}`` from the environment; raise ValueError naming an unset variable."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"environment variable ${{{name}}} is not set")
        return os.environ[name]

    return _VAR.sub(sub, value)


#: Where each kind of URI takes its credentials from instead (the message of a refused config value).
CREDENTIAL_ENV = {
    "mlflow": "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)",
    "s3": "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or an instance / IRSA role",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS, or Workload Identity",
    "az": "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN, or a managed identity",
}
_SCHEME_ENV = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "abfs": "az", "abfss": "az", "adl": "az"}


def refuse_credentials(value: str, kind: str | None = None) -> str:
    """``value`` if it embeds no credentials; else a ValueError naming the environment variables to use.

    Args:
        value: a path, URL or URI, after ``${VAR}`` expansion.
        kind: a key of :data:`CREDENTIAL_ENV` (default: from the URI's scheme).

    Raises:
        ValueError: ``user:password@`` or a credential in the query string (the message never quotes them).
    """
    what = embedded_credentials(value)
    if what is None:
        return value
    scheme = value.partition("://")[0].lower() if "://" in value else ""
    kinds = [kind] if kind else ([_SCHEME_ENV[scheme]] if scheme in _SCHEME_ENV else list(CREDENTIAL_ENV))
    where = "; ".join(CREDENTIAL_ENV[k] for k in kinds)
    raise ValueError(
        f"embeds credentials ({what}): they would be logged with the run (MLflow parameters, "
        f"config/resolved.yaml). Set them in the environment instead: {where}"
    )


def check_tracking_uri(value: str | None) -> str | None:
    """A tracking URI must embed no credentials (None passes)."""
    return None if value is None else refuse_credentials(value, "mlflow")


def _expand_path(value: Any) -> Any:
    if isinstance(value, str | Path):
        text = refuse_credentials(expand_vars(str(value)))
        if "://" in text:  # URLs and object-store paths are kept as they are
            return text
        return str(Path(text).expanduser())
    return value


def check_bbox(v: tuple[float, float, float, float] | None) -> tuple[float, float, float, float] | None:
    """A lon/lat bbox must be (west, south, east, north) with west < east and south < north (None passes)."""
    if v is not None and not (v[0] < v[2] and v[1] < v[3]):
        raise ValueError("bbox must be (west, south, east, north) with west < east and south < north")
    return v


def parse_cpu_list(spec: str | Sequence[int]) -> tuple[int, ...]:
    """CPU ids from a Linux CPU list (``"2-15"``, ``"0,4-7"``, as ``taskset -c`` takes) or a sequence of ints.

    Returns the ids sorted, without repeats. Raises ValueError for an empty set, a negative id, a
    range that runs backwards or text that is not a CPU list.
    """
    ids: set[int] = set()
    if isinstance(spec, str):
        for part in spec.replace(" ", "").split(","):
            lo, sep, hi = part.partition("-")
            if not lo.isdigit() or (sep and not hi.isdigit()):
                raise ValueError(f"{spec!r} is not a CPU list (like '3', '2-15' or '0,4-7')")
            first, last = int(lo), int(hi) if sep else int(lo)
            if last < first:
                raise ValueError(f"range {part!r} in {spec!r} runs backwards")
            ids.update(range(first, last + 1))
    else:
        for cpu in spec:
            if isinstance(cpu, bool) or not isinstance(cpu, int) or cpu < 0:
                raise ValueError(f"CPU ids are integers >= 0, got {cpu!r} in {list(spec)!r}")
            ids.add(cpu)
    if not ids:
        raise ValueError("an empty CPU set; leave it unset to read on any CPU")
    return tuple(sorted(ids))


def check_datetime(v: str | None) -> str | None:
    """A STAC ``datetime``: an RFC 3339 instant or ``start/end`` interval (either end may be ``..``)."""
    if v is not None:
        from eoforge.errors import CatalogError
        from eoforge.times import parse_interval

        try:
            start, end = parse_interval(v)
        except CatalogError as exc:
            raise ValueError(str(exc)) from None
        if start and end and start > end:
            raise ValueError(f"datetime {v!r}: the interval ends before it starts")
    return v


class Strict(BaseModel):
    """Base: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
PathStr = Annotated[str, Field(min_length=1)]


# --------------------------------------------------------------------------- loading
def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: ``<source>: <field.path>: <reason>``."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source}: {path}: {msg}")
    return "\n".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.batch_size=16")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except (yaml.YAMLError, ValueError):  # e.g. 2024-13-45, which YAML takes for a date: the field decides
            node[parts[-1]] = value
    return raw


def load_raw(path: str | Path) -> dict[str, Any]:
    """Read a YAML file into a dict, with errors that name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping with a 'kind' key, got {type(raw).__name__}")
    return raw
