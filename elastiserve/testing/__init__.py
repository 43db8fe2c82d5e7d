"""Local Kubernetes test bed: a real control plane on loopback with kwok fake nodes.

Operator tests must talk to a real ``kube-apiserver`` (validation, RBAC, garbage collection and
scheduling are the behaviours that mocks get wrong), yet nothing can be pulled from a container
registry here. So the binaries are built from the Go module proxy by
``hack/build-k8s-assets.sh`` and located through one variable, ``ELASTISERVE_ASSETS``; this
package starts them as plain processes and tears them down again.
"""

from elastiserve.testing.assets import ASSETS_ENV, Assets
from elastiserve.testing.controlplane import ControlPlane
from elastiserve.testing.errors import ControlPlaneError
from elastiserve.testing.kwok_nodes import FakeNode, default_nodes

__all__ = [
    "ASSETS_ENV",
    "Assets",
    "ControlPlane",
    "ControlPlaneError",
    "FakeNode",
    "default_nodes",
]
