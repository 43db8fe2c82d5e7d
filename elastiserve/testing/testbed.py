"""A control plane with a real node joined to it: what the real-node tests and ``up --real-node``
share.

The caller must already be inside the test network (:func:`elastiserve.testing.netns.enter`;
the pytest plugin does it for the whole session). The cluster has no kwok nodes, so every pod
lands on the real node and really runs; the kwok control plane of the other tests is a
separate cluster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from elastiserve.testing import netns
from elastiserve.testing.controlplane import ControlPlane, assert_no_leftovers
from elastiserve.testing.errors import LeftoverProcessError
from elastiserve.testing.realnode import RealNode


@dataclass(frozen=True)
class RealCluster:
    plane: ControlPlane
    node: RealNode


@contextlib.contextmanager
def real_cluster(
    run_dir: Path, *, images: Sequence[Path] = (), timeout_s: float = 120.0
) -> Iterator[RealCluster]:
    """Start plane and node; on the way out stop both and assert nothing of them is left."""
    plane = ControlPlane.start(run_dir, nodes=(), node_ip=netns.NODE_IP, clean_stale=True,
                               timeout_s=timeout_s, kwok=False)
    node: RealNode | None = None
    try:
        node = RealNode.start(plane, plane.run_dir / "node", images=images, timeout_s=timeout_s)
        yield RealCluster(plane, node)
    finally:
        try:
            if node is not None:
                node.stop()
        finally:
            plane.stop()
        assert_no_leftovers(plane.pids())
        if node is not None:
            left = node.leftovers()
            if left:
                raise LeftoverProcessError("real node left state behind: " + "; ".join(left))
