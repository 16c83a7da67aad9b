"""One error family for everything a user can get wrong.

Every message says *what* is wrong and *where* (config field, STAC item id, asset href).
The CLI and the ``jobs/`` entrypoints turn :class:`EoforgeError` into a one-line message
and exit code 2, with no traceback.

A message is redacted when the error is made (:func:`eoforge.redact.redact`): an href it quotes
keeps no query string (a signature) and no user name or password, wherever the error then goes
(chip error columns, ``skipped_chips.json``, plan stats, logs).
"""

from __future__ import annotations

from eoforge.redact import redact


class EoforgeError(Exception):
    """Base class of errors caused by input (config, catalog, data, services); messages are redacted."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigError(EoforgeError):
    """A config file or value is invalid; the message names the field path."""


class CatalogError(EoforgeError):
    """A STAC catalog or API answered with something unusable."""


class ChipReadError(EoforgeError):
    """A chip's asset is missing or unreadable (the chip is skipped and counted)."""


class ServiceError(EoforgeError):
    """A service (Ray, MLflow, STAC API, Kubernetes) is unreachable or refused."""


class CacheIntegrityError(ChipReadError):
    """A decoded-chip cache's files do not match its manifest (missing, truncated or altered); names the file."""


class ImplausibleItemError(ChipReadError):
    """An item's values are ones no sensor measures in the units its plan row declares (chip skipped, counted)."""


class ImplausibleDataError(CatalogError):
    """Every checked item of a plan has values no sensor measures in its declared units: nothing to train on."""


class UnsafeArtifactError(EoforgeError):
    """A model or checkpoint carries code (a pickle) or is not eoforge's weights + card; it is not loaded."""
