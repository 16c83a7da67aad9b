"""Href signing hooks, chosen by name from a closed registry: plans and configs carry names, never code.

A plan row's ``access`` cell and ``catalog.signing`` name the hook that signs each href just before
a reading process opens it. The name is looked up here, and only here:

- built-ins: ``none`` (hrefs as they are) and ``planetary_computer`` (``planetary_computer.sign``,
  from the ``planetary-computer`` package);
- hooks a deployment registers in its own installed distribution, through the entry point group
  :data:`ENTRY_POINT_GROUP`, e.g. in its ``pyproject.toml``::

      [project.entry-points."eoforge.signing"]
      my_sas = "my_package.auth:sign_href"

Any other name (``os:system``, ``my_package.auth:sign_href``) is refused *before anything is
imported*, with the registered names in the message: whoever can write a plan chooses among the
hooks the deployment installed, and cannot make a worker import or call anything else. Listing the
entry points reads installed metadata only; a hook's module is imported when its name is chosen.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

#: The entry point group a deployment registers its signing hooks in (``name = "module:function"``).
ENTRY_POINT_GROUP = "eoforge.signing"

#: Built-in hooks, by name: identity, and Planetary Computer's SAS signing.
BUILTIN_SIGNERS = ("none", "planetary_computer")


class UnknownSigner(ValueError):
    """A signing hook name that is neither built in nor registered (nothing was imported)."""


def _registered() -> dict[str, importlib.metadata.EntryPoint]:
    """Entry points of :data:`ENTRY_POINT_GROUP` by name (metadata only: nothing is imported).

    Raises:
        UnknownSigner: two installed distributions register one name with different targets.
    """
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN_SIGNERS:
            continue  # a built-in name always means the built-in
        if ep.name in found and found[ep.name].value != ep.value:
            raise UnknownSigner(
                f"signing hook {ep.name!r} is registered twice in entry point group {ENTRY_POINT_GROUP!r} "
                f"({found[ep.name].value} and {ep.value}); uninstall one"
            )
        found[ep.name] = ep
    return found


def registered_signers() -> list[str]:
    """Every name a plan or config may give as its signing hook: built-ins, then registered, sorted."""
    return [*BUILTIN_SIGNERS, *sorted(_registered())]


def check_signer_name(name: str | None) -> str:
    """``name`` if it is a built-in or registered hook (None means ``none``).

    Raises:
        UnknownSigner: any other name; the message lists the registered names.
    """
    name = name or "none"
    if name in BUILTIN_SIGNERS or name in _registered():
        return name
    hint = (
        "; a 'module:function' hook must now be registered by name in entry point group "
        f"{ENTRY_POINT_GROUP!r} of an installed distribution"
        if ":" in name
        else ""
    )
    raise UnknownSigner(
        f"signing hook {name!r} is not registered (registered: {', '.join(registered_signers())}){hint}; "
        "see docs/providers.md"
    )


def load_signer(name: str | None) -> Callable[[str], str]:
    """The hook ``name`` chooses: checked against the registry first, then imported.

    Raises:
        UnknownSigner: the name is not registered (nothing was imported).
        ImportError: the chosen hook's package is missing or broken.
        TypeError: the registered object is not callable.
    """
    name = check_signer_name(name)
    if name == "none":
        return _identity
    if name == "planetary_computer":
        import planetary_computer

        return planetary_computer.sign  # type: ignore[no-any-return]
    fn = _registered()[name].load()
    if not callable(fn):
        raise TypeError(f"signing hook {name!r} ({_registered()[name].value}) is not callable")
    return fn  # type: ignore[no-any-return]


def _identity(href: str) -> str:
    return href
