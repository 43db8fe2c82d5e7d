"""Where the control-plane binaries live.

``ELASTISERVE_ASSETS`` is the single knob, in the spirit of envtest's ``KUBEBUILDER_ASSETS``: the
build script writes there, the harness reads from there, and a user who already has a set of
binaries points it at theirs. Without it both fall back to the same per-version cache directory,
so ``hack/build-k8s-assets.sh`` followed by ``pytest`` needs no configuration at all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from elastiserve.testing.errors import AssetMissingError

ASSETS_ENV = "ELASTISERVE_ASSETS"

# Must match the k8s.io/kubernetes version in hack/k8s-assets/kube/go.mod (a test checks it):
# the build script derives its default cache directory from that file, this module from here.
KUBE_VERSION = "v1.36.3"

BUILD_HINT = "run hack/build-k8s-assets.sh"


def default_assets_dir(home: Path | None = None) -> Path:
    """The cache directory that the build script fills when ``ELASTISERVE_ASSETS`` is unset."""
    base = home if home is not None else Path.home()
    return base / ".cache" / "elastiserve" / "assets" / f"k8s-{KUBE_VERSION}"


@dataclass(frozen=True)
class Assets:
    """A directory of binaries, checked one name at a time when a component needs it."""

    directory: Path
    from_env: bool

    @classmethod
    def locate(cls, environ: Mapping[str, str] | None = None) -> Assets:
        """Resolve the assets directory from the environment (or the default cache)."""
        env = os.environ if environ is None else environ
        value = env.get(ASSETS_ENV, "")
        if value:
            return cls(Path(value).expanduser(), from_env=True)
        return cls(default_assets_dir(), from_env=False)

    def binary(self, name: str) -> Path:
        """The path of an executable binary, or an error that says how to get it."""
        path = self.directory / name
        if path.is_file() and os.access(path, os.X_OK):
            return path
        problem = "is not executable" if path.exists() else "is missing"
        source = (
            f"{ASSETS_ENV}={self.directory}"
            if self.from_env
            else f"{ASSETS_ENV} is unset, default {self.directory}"
        )
        raise AssetMissingError(
            f"control-plane binary {name!r} {problem} at {path} ({source}); "
            f"{BUILD_HINT} or point {ASSETS_ENV} at a directory that holds {name}"
        )

    def versions(self) -> dict[str, str]:
        """Binary name -> version, read from the ``VERSIONS`` file the build script writes."""
        path = self.directory / "VERSIONS"
        if not path.is_file():
            return {}
        result: dict[str, str] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            fields = line.split()
            if len(fields) >= 2 and not fields[0].startswith("#"):
                result[fields[0]] = fields[1]
        return result
