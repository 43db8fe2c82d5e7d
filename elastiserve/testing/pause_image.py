"""The pod sandbox ("pause") image, written as an OCI archive without any container tool.

No registry serves ``registry.k8s.io/pause`` here, so the harness packs its own sandbox
program (``hack/k8s-assets/pause``, built into the assets directory as ``elastiserve-pause``)
into a one-layer image. The same program with ``-http`` is the echo workload of the harness's
own tests (:data:`ECHO_REPOSITORY`): probes and Services are checked without the product's
images. The archive is deterministic (fixed timestamps and owners), so the
same binary always gives the same digest, and the tag is taken from that digest: a changed
binary can never be confused with a cached image of the old one.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPOSITORY = "localhost/elastiserve/pause"
ECHO_REPOSITORY = "localhost/elastiserve/testbed-echo"
_LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
_CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
_MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class PauseImage:
    ref: str
    archive: Path


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def _layer(binary: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("pause")
        info.size = len(binary)
        info.mode = 0o755
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        tar.addfile(info, io.BytesIO(binary))
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def _descriptor(media_type: str, digest: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}


def write_pause_image(
    binary: Path,
    out_dir: Path,
    *,
    repository: str = REPOSITORY,
    entrypoint: tuple[str, ...] = ("/pause",),
) -> PauseImage:
    """Write ``<out_dir>/<name>-<digest>.tar`` (OCI layout) for ``binary``; reuse it if there.

    The image runs as uid 65535 (the upstream pause image's choice), so it also passes a
    pod's ``runAsNonRoot``.
    """
    layer_digest, layer = _blob(_layer(binary.read_bytes()))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": list(entrypoint), "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_bytes = _blob(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": _MANIFEST_TYPE,
        "config": _descriptor(_CONFIG_TYPE, config_digest, config_bytes),
        "layers": [_descriptor(_LAYER_TYPE, layer_digest, layer)],
    }
    manifest_digest, manifest_bytes = _blob(json.dumps(manifest, sort_keys=True).encode())
    tag = manifest_digest.removeprefix("sha256:")[:12]
    ref = f"{repository}:{tag}"
    archive = out_dir / f"{repository.rsplit('/', 1)[-1]}-{tag}.tar"
    if archive.is_file():
        return PauseImage(ref, archive)
    index = {
        "schemaVersion": 2,
        "manifests": [
            _descriptor(
                _MANIFEST_TYPE, manifest_digest, manifest_bytes,
                annotations={
                    "io.containerd.image.name": ref,
                    "org.opencontainers.image.ref.name": tag,
                },
            )
        ],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_suffix(".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        _add(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        for digest, data in (
            (layer_digest, layer),
            (config_digest, config_bytes),
            (manifest_digest, manifest_bytes),
        ):
            _add(tar, f"blobs/sha256/{digest.removeprefix('sha256:')}", data)
    tmp.replace(archive)
    return PauseImage(ref, archive)
