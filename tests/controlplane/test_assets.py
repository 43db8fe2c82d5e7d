"""Locating binaries, and the build script's own contract."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from elastiserve.testing.assets import ASSETS_ENV, KUBE_VERSION, Assets, default_assets_dir
from elastiserve.testing.errors import AssetMissingError

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "hack" / "build-k8s-assets.sh"


def test_harness_and_build_script_agree_on_the_kubernetes_version() -> None:
    gomod = (REPO / "hack" / "k8s-assets" / "kube" / "go.mod").read_text()
    pinned = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", gomod, re.MULTILINE)
    assert pinned is not None
    assert pinned.group(1) == KUBE_VERSION


def test_every_staging_module_is_replaced_with_the_matching_tag() -> None:
    gomod = (REPO / "hack" / "k8s-assets" / "kube" / "go.mod").read_text()
    targets = re.findall(r"^\s*(k8s\.io/\S+) => (k8s\.io/\S+) (v\S+)", gomod, re.MULTILINE)
    assert len(targets) > 25
    staging = "v0." + KUBE_VERSION.removeprefix("v1.")
    assert all(src == dst and version == staging for src, dst, version in targets)


def test_env_variable_wins_over_the_default(tmp_path: Path) -> None:
    assert Assets.locate({ASSETS_ENV: str(tmp_path)}).directory == tmp_path
    unset = Assets.locate({})
    assert unset.directory == default_assets_dir()
    assert unset.directory.name == f"k8s-{KUBE_VERSION}"


def test_missing_binary_message_for_the_default_location(tmp_path: Path) -> None:
    assets = Assets(tmp_path, from_env=False)
    with pytest.raises(AssetMissingError, match=f"{ASSETS_ENV} is unset, default {tmp_path}"):
        assets.binary("kube-apiserver")


def test_versions_file_is_parsed(tmp_path: Path) -> None:
    (tmp_path / "VERSIONS").write_text("# header\netcd v3.6.16 go.etcd.io/etcd/server/v3\n")
    assert Assets(tmp_path, from_env=True).versions() == {"etcd": "v3.6.16"}


def test_build_script_without_go_fails_at_once_with_one_line(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), ASSETS_ENV: str(tmp_path / "a")},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert time.monotonic() - started < 5
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "'go' not found on PATH" in lines[0]
    assert not (tmp_path / "a").exists()
