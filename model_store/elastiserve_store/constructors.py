"""Which model constructors a bundle may name, and how they are looked up.

A bundle built from a torchvision model or a user's own ``nn.Module`` cannot carry its code
without pickle, so its manifest names a *constructor* instead: ``torchvision:<function>`` (a
classification model of ``torchvision.models``) or ``package.module:factory`` (the user's code,
which the serving image must also have). Naming code is still running code, so the serving side
decides what may run, never the bundle:

* ``torchvision:<name>`` is allowed when ``<name>`` is one of torchvision's registered
  classification builders (``torchvision.models.list_models``), nothing else of the package;
* ``package.module:factory`` is allowed only when listed in the ``ELASTISERVE_ALLOWED_FACTORIES``
  environment variable of the loading process (comma or whitespace separated), or trusted in
  this process by :func:`trust_factory` (the training CLI does so for the factory its user
  named on the command line).

The check runs on the name alone, before any module is imported, so a refused name never
executes anything. Constructor arguments are plain JSON values, and the ones that would make
torchvision fetch pretrained weights from a hub (``weights``, ``weights_backbone``) are refused:
a bundle's weights come from its own safetensors file.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from .errors import ManifestError

ALLOW_ENV = "ELASTISERVE_ALLOWED_FACTORIES"
TORCHVISION = "torchvision"
_FACTORY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
_HUB_ARGS = frozenset({"weights", "weights_backbone", "pretrained", "pretrained_backbone"})
MAX_KWARGS = 64

_trusted: set[str] = set()

Constructor = Callable[..., nn.Module]


class ConstructorNotAllowedError(ManifestError):
    """A bundle names a constructor the serving side has not allowed."""


def is_external(name: str) -> bool:
    """Whether an architecture name is a constructor reference (not an in-project one)."""
    return ":" in name


def trust_factory(name: str) -> None:
    """Allow ``package.module:factory`` in this process (the training CLI's own user)."""
    check_name(name)
    _trusted.add(name)


def allowed_factories() -> frozenset[str]:
    """User factories this process may run: the environment's list plus trusted ones."""
    listed = re.split(r"[\s,]+", os.environ.get(ALLOW_ENV, "").strip())
    return frozenset(n for n in listed if n) | frozenset(_trusted)


def check_name(name: str) -> None:
    """Refuse a malformed constructor reference (before any policy or import)."""
    if len(name) > 200 or not _FACTORY.fullmatch(name):
        raise ManifestError(f"constructor {name[:80]!r} must be 'torchvision:<model>' or "
                            f"'package.module:factory'")


def torchvision_models() -> frozenset[str]:
    """torchvision's registered classification builders (detection etc. are left out)."""
    import torchvision.models as tvm

    return frozenset(tvm.list_models(module=tvm))


def check_allowed(name: str) -> None:
    """Raise :class:`ConstructorNotAllowedError` unless ``name`` may be built here."""
    check_name(name)
    module, func = name.split(":", 1)
    if module == TORCHVISION:
        try:
            known = torchvision_models()
        except ImportError:
            raise ConstructorNotAllowedError(
                f"constructor {name!r} needs torchvision, which is not installed") from None
        if func not in known:
            raise ConstructorNotAllowedError(
                f"constructor {name!r}: {func!r} is not a torchvision classification model")
        return
    if name not in allowed_factories():
        raise ConstructorNotAllowedError(
            f"constructor {name!r} is not allowed here: list it in {ALLOW_ENV} on the serving "
            f"side to let bundles run it")


def check_kwargs(kwargs: Mapping[str, Any]) -> None:
    """Constructor arguments: at most :data:`MAX_KWARGS` plain JSON values, no hub weights."""
    if len(kwargs) > MAX_KWARGS:
        raise ManifestError(f"constructor takes at most {MAX_KWARGS} arguments here")
    for key, value in kwargs.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ManifestError(f"constructor argument name {str(key)[:40]!r} is not a name")
        if key in _HUB_ARGS and value is not None:
            raise ManifestError(f"constructor argument {key!r} would fetch pretrained weights; "
                                f"give trained weights as a file instead")
        if not _plain(value, 0):
            raise ManifestError(f"constructor argument {key!r} must be a plain JSON value "
                                f"(number, string, boolean, null or a short list of those)")


def _plain(value: Any, depth: int) -> bool:
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return len(value) <= 200
    if isinstance(value, list) and depth < 2 and len(value) <= 64:
        return all(_plain(v, depth + 1) for v in value)
    return False


def resolve(name: str) -> Constructor:
    """The callable named by ``name``, after :func:`check_allowed` (imports only then)."""
    check_allowed(name)
    module, func = name.split(":", 1)
    target = importlib.import_module("torchvision.models" if module == TORCHVISION else module)
    ctor = getattr(target, func, None)
    if not callable(ctor):
        raise ManifestError(f"constructor {name!r}: {module} has no callable {func!r}")
    return ctor  # type: ignore[no-any-return]
