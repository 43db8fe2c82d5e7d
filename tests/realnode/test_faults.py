"""A missing piece of the real node is one clear error, raised before anything starts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from elastiserve.testing import netns, realnode
from elastiserve.testing.assets import Assets
from elastiserve.testing.errors import AssetMissingError

pytestmark = [pytest.mark.realnode]


def _plane(node_ip: str | None, assets: Assets) -> SimpleNamespace:
    """Only what RealNode.start reads before it starts anything."""
    return SimpleNamespace(layout=SimpleNamespace(node_ip=node_ip), assets=assets)


def test_a_missing_kubelet_is_named(tmp_path: Path) -> None:
    if netns.entered() is None:
        pytest.fail("the session is not inside the test network (the plugin needs root)")
    source = Assets.locate()
    partial = tmp_path / "assets"
    partial.mkdir()
    for name in ("kube-proxy", "elastiserve-pause"):
        os.symlink(source.binary(name), partial / name)
    with pytest.raises(AssetMissingError, match="'kubelet' is missing"):
        realnode.RealNode.start(_plane(netns.NODE_IP, Assets(partial, from_env=True)),
                                tmp_path / "node")
    assert not (tmp_path / "node").exists(), "nothing is made before the check"


def test_a_plane_without_a_node_address_is_refused(tmp_path: Path) -> None:
    with pytest.raises(realnode.RealNodeError, match="node_ip"):
        realnode.RealNode.start(_plane(None, Assets.locate()), tmp_path / "node")


def test_a_missing_host_tool_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr("shutil.which",
                        lambda name: None if name == "runc" else real_which(name))
    monkeypatch.setattr("pathlib.Path.is_file",
                        lambda self: "runc" not in self.name and os.path.isfile(self))
    with pytest.raises(realnode.RealNodeError, match="'runc'"):
        realnode.check_prerequisites()
