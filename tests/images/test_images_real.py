"""The two images, really built (or taken from the cache) and really run with podman.

What a kubelet will rely on: the operator image has no torch for the interpreter its
entrypoint uses; the serving image has torch, TorchServe and Java and answers a request with
TorchServe on a read-only root filesystem; both run as uid 65532; the archives are
docker-archives naming their ref, which containerd imports under that name.

A cold build takes minutes (a Debian base from mmdebstrap, pip from PyPI; both reach the
registries from the host's network namespace); a warm run reuses the cache in well under a
second. Containers run with ``--network none``: their traffic stays on their own loopback.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from elastiserve.testing.images import (
    BuiltImage,
    Podman,
    ensure_images,
    load_into_podman,
    plan,
)

# The cold build (a few minutes here) happens in whichever test sets the fixture up first.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def built() -> dict[str, BuiltImage]:
    return ensure_images()


def run(image: BuiltImage, *args: str, entrypoint: str | None = None, timeout_s: float = 120,
        volumes: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``podman run`` as a pod would: read-only root, writable /tmp and $HOME, no network."""
    podman: Podman = load_into_podman(image)
    argv = podman.argv(
        "run", "--rm", "--network", "none", "--read-only",
        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
        "--tmpfs", "/tmp:rw,mode=1777", "--tmpfs", "/home/elastiserve:rw,mode=1777",
        "--cap-drop", "all", "--security-opt", "no-new-privileges",
        *(f"--volume={v}" for v in volumes),
        *(["--entrypoint", entrypoint] if entrypoint else []),
        image.ref, *args,
    )
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                          env=podman.env(), check=False)


def test_both_images_are_built_or_cached(built: dict[str, BuiltImage]) -> None:
    assert list(built) == ["operator", "serving"]
    for name, image in built.items():
        assert image.ref.startswith(f"localhost/elastiserve/{name}:")
        assert image.archive.is_file() and image.size_mb > 10
    # A second call finds both in the cache at once. Only when the checkout changed while the
    # images were built (someone editing it meanwhile) is there nothing to compare.
    if all(plan(name).ref == image.ref for name, image in built.items()):
        started = time.monotonic()
        again = ensure_images()
        assert time.monotonic() - started < 3.0
        assert all(i.cached for i in again.values())
        assert {n: i.ref for n, i in again.items()} == {n: i.ref for n, i in built.items()}


def test_archives_are_docker_archives_that_name_their_ref(built: dict[str, BuiltImage]) -> None:
    for image in built.values():
        with tarfile.open(image.archive) as archive:
            member = archive.extractfile("manifest.json")
            assert member is not None
            manifest = json.load(member)
        assert [entry["RepoTags"] for entry in manifest] == [[image.ref]]


def test_operator_has_no_torch_and_runs_as_65532(built: dict[str, BuiltImage]) -> None:
    image = built["operator"]
    done = run(image, "-c", "import torch", entrypoint="python")
    assert done.returncode != 0
    assert "No module named 'torch'" in done.stderr, done.stderr
    done = run(image, "-c", "import os, sys, kopf, elastiserve_operator; "
                            "print(os.getuid(), os.getgid(), sys.prefix)", entrypoint="python")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["65532", "65532", "/opt/venv"]


def test_serving_has_torch_torchserve_and_java_as_65532(built: dict[str, BuiltImage]) -> None:
    script = ("id -u; id -g; for c in torchserve java elastiserve; do command -v $c; done; "
              "python -c 'import torch, ts; print(torch.__version__)'; java -version 2>&1 "
              "| head -n 1; python -c 'import torch, torchvision; print(torchvision.__file__, "
              "torch.__file__, torchvision.models.resnet18(num_classes=3).fc.out_features)'")
    done = run(built["serving"], "-c", script, entrypoint="/bin/sh")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["65532", "65532"]
    assert lines[2:5] == ["/opt/venv/bin/torchserve", "/usr/bin/java", "/opt/venv/bin/elastiserve"]
    assert lines[5].startswith("2.")  # Debian's CPU torch
    assert "openjdk" in lines[6]
    # torchvision (bundles naming a torchvision model) is Debian's, beside Debian's torch:
    # nothing from PyPI brought a second torch into the venv.
    vision, torch_file, classes = lines[7].split()
    assert vision.startswith("/usr/lib/python3/dist-packages/torchvision/"), vision
    assert torch_file.startswith("/usr/lib/python3/dist-packages/torch/"), torch_file
    assert classes == "3"
    done = run(built["serving"], "serve", "--help")  # the image's own entrypoint
    assert done.returncode == 0 and "--bundle" in done.stdout, done.stderr


def test_serving_answers_a_request_with_torchserve(
    built: dict[str, BuiltImage], tmp_path: Path
) -> None:
    from elastiserve_serve.archive import ArchiveSpec, build_archive
    from tests.serving.bundles import make_bundle

    store = tmp_path / "store"
    spec = ArchiveSpec(workers=1, batch_size=1, max_batch_delay_ms=5,
                       handler={"control_file": "/tmp/elastiserve-smoke/level.json",
                                "allow_pin": True, "threads": 1})
    build_archive(make_bundle(tmp_path / "bundle"), store, "elastic", spec)
    store.chmod(0o755)
    done = run(built["serving"], "/smoke/smoke_serving.py", "/store", entrypoint="python",
               timeout_s=300, volumes=(f"{store}:/store:ro", f"{HERE}:/smoke:ro"))
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["status"] == 200 and answer["level"] == "L2"
    assert answer["java"].startswith("openjdk version \"21")
    assert answer["python"].startswith("3.13")


def test_serving_answers_with_a_bundle_naming_a_torchvision_model(
    built: dict[str, BuiltImage], tmp_path: Path
) -> None:
    """A bundle whose manifest names ``torchvision:resnet18`` (schema 3) is rebuilt by the
    image's own torchvision (Debian's, beside Debian's torch) inside TorchServe."""
    from elastiserve_serve.archive import ArchiveSpec, build_archive
    from tests.serving.torchvision_bundles import CONSTRUCTOR, LEVELS, make_torchvision_bundle

    store = tmp_path / "store"
    make_torchvision_bundle(tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["architecture"]["name"] == CONSTRUCTOR
    spec = ArchiveSpec(workers=1, batch_size=1, max_batch_delay_ms=5,
                       handler={"control_file": "/tmp/elastiserve-smoke/level.json",
                                "allow_pin": True, "threads": 1})
    build_archive(tmp_path / "bundle", store, "elastic", spec)
    store.chmod(0o755)
    done = run(built["serving"], "/smoke/smoke_serving.py", "/store", entrypoint="python",
               timeout_s=300, volumes=(f"{store}:/store:ro", f"{HERE}:/smoke:ro"))
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["status"] == 200 and answer["level"] == LEVELS[-1]


@contextlib.contextmanager
def private_containerd() -> Iterator[Path]:
    """containerd on a socket of its own, CRI off; stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="es-ctrd-"))
    socket = root / "sock"
    config = root / "config.toml"
    config.write_text(
        f'version = 2\nroot = "{root}/root"\nstate = "{root}/state"\n'
        f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n'
    )
    with (root / "log").open("wb") as log:
        process = subprocess.Popen(["containerd", "--config", str(config)], stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert process.poll() is None, (root / "log").read_text()
            assert time.monotonic() < deadline, "containerd did not open its socket"
            time.sleep(0.1)
        yield socket
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def test_containerd_imports_the_operator_archive(built: dict[str, BuiltImage]) -> None:
    image = built["operator"]
    with private_containerd() as socket:
        ctr = ["ctr", "--address", str(socket), "--namespace", "k8s.io"]
        done = subprocess.run([*ctr, "images", "import", str(image.archive)],
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        listed = subprocess.run([*ctr, "images", "list", "--quiet"], capture_output=True,
                                text=True, timeout=60, check=True)
        assert image.ref in listed.stdout.split()
