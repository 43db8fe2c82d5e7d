"""Base images made from Debian packages, for machines where no container registry answers.

The Dockerfiles take their base as a build argument (``PYTHON_IMAGE``, default
``python:3.12-slim``); here that base is a root filesystem that ``hack/debian-base.sh`` builds
with ``mmdebstrap`` from deb.debian.org and that podman imports as a local image. A recipe is a
suite and a package list; its key hashes those, the image's environment and the script, so
changing any of them builds a new base (and, through the image key, new images).

Debian 13 "trixie" because it packages a CPU ``python3-torch`` (2.6.0): PyPI's x86_64 torch is
the CUDA build (4-5 GB with its nvidia wheels) and PyTorch's CPU index is not reachable from
the build machines. trixie has no openjdk-17; TorchServe 0.12 runs on its openjdk-21
(``tests/images`` starts it in the built image and sends it a request).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "hack" / "debian-base.sh"
REPOSITORY = "localhost/elastiserve/base-"

# What the Dockerfiles' own steps expect of any base: ``python`` (python-is-python3),
# ``python -m venv`` (python3-venv brings ensurepip's wheels), groupadd/useradd (passwd) and
# TLS roots for pip (ca-certificates).
PYTHON_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates", "passwd")

# The imported image's config: a rootfs tarball carries none, and the Dockerfiles extend PATH
# (``ENV PATH=/opt/venv/bin:${PATH}``), so it must be set here.
BASE_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
)


@dataclass(frozen=True)
class BaseRecipe:
    """One base image: a Debian suite and the packages installed on top of minbase."""

    name: str
    suite: str
    packages: tuple[str, ...]

    def key(self, script: Path = SCRIPT) -> str:
        """SHA-256 over the suite, the package set, the image env and the script's bytes."""
        digest = hashlib.sha256()
        for part in ("elastiserve-debian-base/1", self.suite, *sorted(set(self.packages)),
                     *BASE_ENV):
            digest.update(part.encode() + b"\0")
        digest.update(script.read_bytes())
        return digest.hexdigest()

    def ref(self, script: Path = SCRIPT) -> str:
        """The local image reference, e.g. ``localhost/elastiserve/base-serving:1a2b3c4d5e6f``."""
        return f"{REPOSITORY}{self.name}:{self.key(script)[:12]}"

    def command(self, output: Path, script: Path = SCRIPT) -> list[str]:
        """The command that writes this base's root filesystem tarball to ``output``."""
        return ["bash", str(script), self.suite, str(output), *self.packages]

    def import_changes(self) -> list[str]:
        """``podman import --change`` arguments that give the tarball an image config."""
        changes: list[str] = []
        for env in BASE_ENV:
            changes += ["--change", f"ENV {env}"]
        return [*changes, "--change", 'CMD ["/bin/bash"]']


# The operator image carries no torch: its base has none either (the image checks it again).
OPERATOR_BASE = BaseRecipe("operator", "trixie", PYTHON_PACKAGES)
SERVING_BASE = BaseRecipe(
    "serving",
    "trixie",
    # python3-torchvision is built against the same suite's python3-torch (a bundle that
    # names a torchvision model needs it; PyPI's wheel would bring another torch).
    (*PYTHON_PACKAGES, "python3-torch", "python3-torchvision", "python3-numpy",
     "openjdk-21-jre-headless"),
)
