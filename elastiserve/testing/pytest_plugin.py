"""pytest fixtures for the local control plane.

Register with ``pytest_plugins = ["elastiserve.testing.pytest_plugin"]``. One control plane
serves the whole session (starting one costs seconds, and tests isolate themselves by
namespace through ``kube_namespace``). Missing binaries fail the tests that need them, loudly:
a silent skip would let "make test" pass without ever talking to a real API server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from elastiserve.testing.controlplane import ControlPlane, assert_no_leftovers
from elastiserve.testing.processes import wait_until

START_TIMEOUT_ENV = "ELASTISERVE_CONTROLPLANE_TIMEOUT"


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A running control plane with the default fake nodes, shared by the session.

    Teardown also checks that no process it started is left running, so a leak fails the
    run instead of piling up on the CI machine.
    """
    timeout_s = float(os.environ.get(START_TIMEOUT_ENV, "120"))
    plane = ControlPlane.start(tmp_path_factory.mktemp("controlplane"), timeout_s=timeout_s)
    try:
        yield plane
    finally:
        plane.stop()
        assert_no_leftovers(plane.pids())


@pytest.fixture(scope="session")
def kube_client(control_plane: ControlPlane) -> Iterator[Any]:
    """A ``kubernetes.client.ApiClient`` logged in as the harness's admin."""
    import kubernetes  # the dev extra; a missing client must fail the run, not skip it

    client = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(control_plane.kubeconfig_path)
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def kube_namespace(kube_client: Any) -> Iterator[str]:
    """A fresh namespace for one test, deleted (without waiting) afterwards.

    Returns once the namespace's default ServiceAccount exists, because until then the API
    server refuses pods created directly in it.
    """
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(kube_client)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))

    def has_default_account() -> bool:
        accounts = core.list_namespaced_service_account(
            name, field_selector="metadata.name=default"
        )
        return bool(accounts.items)

    wait_until(has_default_account, what=f"ServiceAccount {name}/default", timeout_s=30.0)
    try:
        yield name
    finally:
        core.delete_namespace(name)
