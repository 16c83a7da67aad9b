"""Redaction: no signed URL or embedded credential reaches an error, a log line, an artifact or MLflow.

One rule set, used wherever text that may quote an href is kept or shown:

- every URL with a scheme (``https://``, ``s3://``, ``gs://``, ``az://``, ``/vsicurl/https://...``
  inside GDAL messages, ...) loses its **whole query string** (``?…`` is left to show there was
  one), its fragment when that carries a credential key (``#access_token=…``, shown as ``#…``; a
  fragment without one, such as an MLflow UI route ``#/experiments/1/runs/<id>``, is kept), and its
  **userinfo** becomes ``***`` (``https://***@host/path``). The
  query goes whole rather than key by key: signatures hide under many names (SAS ``sig``,
  ``X-Amz-Signature``, ``X-Goog-Signature``, ``token``, a provider's own), and a published
  asset href has no query worth keeping in an error;
- in text without a scheme (a local path GDAL quotes, a bare query), the values of the
  credential keys in :data:`CREDENTIAL_KEYS` after ``?`` or ``&`` become ``***``.

:func:`redact` applies both to any text; :func:`redact_tree` to every string of a JSON-like value
(a config, plan stats); :func:`install_log_redaction` to every log record of the process (the
package installs it on import, so Ray workers' logs are covered too, e.g. GDAL's "HTTP response
code on <url>" warnings). :func:`embedded_credentials` is the config check: a URI that carries
credentials is refused, not redacted.
"""

from __future__ import annotations

import logging
import re
from typing import Any

#: Query keys whose values are credentials (case-insensitive): SAS, AWS / GCS presigned URLs, tokens, keys.
CREDENTIAL_KEYS = (
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
    "token",
    "access_token",
    "sas_token",
    "api_key",
    "apikey",
    "api-key",
    "subscription-key",
    "password",
    "passwd",
    "secret",
    "client_secret",
    # pyarrow's and fsspec's spellings in object-store URIs (eoforge.storage refuses them too)
    "access_key",
    "secret_key",
    "session_token",
    "key",
)

#: Schemes whose user name is an identity, not a secret (``hdfs://user@namenode``).
_USER_IS_NOT_SECRET = ("hdfs", "viewfs")

#: A URL in free text: scheme, authority and path up to a space, quote or bracket; query and
#: fragment up to a space or quote (a ``)`` inside a signature must not end the match early), less
#: a ``:`` or ``,`` that ends the URL in a sentence (``... a.tif?sig=...: No such file``).
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>?#)]*(?:[?#][^\s'\"<>]*?(?=[:,]?(?:[\s'\"<>]|$)))?")
_KEYS = "|".join(map(re.escape, CREDENTIAL_KEYS))
_KEY_VALUE = re.compile(rf"([?&;](?:{_KEYS})=)[^&\s'\"<>#]*?(?=[:,]?(?:[&\s'\"<>#]|$))", re.IGNORECASE)
_FRAGMENT_KEY = re.compile(rf"[#&;/?](?:{_KEYS})=", re.IGNORECASE)
_PARTS = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)([^?#]*)(\?[^#]*)?(#.*)?$", re.DOTALL)


def redact_url(url: str) -> str:
    """``url`` without its query string, userinfo and a credential-carrying fragment (``https://***@host/path?…``).

    A URL with none of them comes back unchanged; text that is not a URL goes through the
    key rule of :func:`redact` only.
    """
    m = _PARTS.match(url)
    if not m:
        return _KEY_VALUE.sub(r"\1***", url)
    scheme, authority, path, query, fragment = m.groups()
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    if fragment and _FRAGMENT_KEY.search(fragment):
        fragment = "#…"
    return f"{scheme}{authority}{path}{'?…' if query else ''}{fragment or ''}"


def redact(text: str) -> str:
    """``text`` with every URL passed through :func:`redact_url` and credential query values masked."""
    if "://" not in text and "=" not in text:
        return text
    return _KEY_VALUE.sub(r"\1***", _URL.sub(lambda m: redact_url(m.group(0)), text))


def redact_tree(value: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, tuples, strings, numbers) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_tree(v) for v in value)
    return value


def embedded_credentials(uri: str) -> str | None:
    """What credentials ``uri`` embeds (userinfo, or credential keys in its query), or None.

    For config checks: such a URI would put the secret in MLflow parameters, ``resolved.yaml``
    and every log line that names it.
    """
    m = _PARTS.match(uri)
    if m and "@" in m.group(2):
        user = m.group(2).rsplit("@", 1)[0]
        if ":" in user or m.group(1)[:-3].lower() not in _USER_IS_NOT_SECRET:
            return "a user name or password in the URI (user:password@)"
    query = uri.partition("?")[2]
    keys = {part.partition("=")[0].lower() for part in re.split(r"[&;]", query) if part}
    found = sorted(keys & set(CREDENTIAL_KEYS))
    if found:
        return f"credentials in the query string ({', '.join(found)})"
    return None


def _redacting_factory(base: Any) -> Any:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = base(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as it would
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    factory.eoforge_redacts = True  # type: ignore[attr-defined]
    return factory


def install_log_redaction() -> None:
    """Redact every log record this process creates, from any logger (idempotent).

    Wraps the log record factory: a record's formatted message passes through :func:`redact`
    before any handler sees it. Tracebacks attached to a record (``exc_info``) are not rewritten:
    eoforge's errors are redacted when they are made.
    """
    base = logging.getLogRecordFactory()
    if not getattr(base, "eoforge_redacts", False):
        logging.setLogRecordFactory(_redacting_factory(base))
