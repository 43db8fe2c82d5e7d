"""Local Kubernetes test bed: a real control plane on loopback with kwok fake nodes.

Operator tests must talk to a real ``kube-apiserver`` (validation, RBAC, garbage collection and
scheduling are the behaviours that mocks get wrong), yet nothing can be pulled from a container
registry here. So the binaries are built from the Go module proxy by
``hack/build-k8s-assets.sh`` and located through one variable, ``ELASTISERVE_ASSETS``; the
modules here start them as plain processes and tear them down again:

* ``controlplane`` -- ``ControlPlane.start(...)`` and the ``up`` command line;
* ``pytest_plugin`` -- the ``control_plane``, ``kube_client`` and ``kube_namespace`` fixtures;
* ``kwok_nodes`` -- the fake node pool (Jetson Orin boards and an x86 server).

Nothing is imported here, so that ``python -m elastiserve.testing.controlplane`` runs the module
once, as ``__main__``.
"""
