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

from elastiserve.testing import netns
from elastiserve.testing.controlplane import ControlPlane, assert_no_leftovers
from elastiserve.testing.processes import wait_until

START_TIMEOUT_ENV = "ELASTISERVE_CONTROLPLANE_TIMEOUT"
_NETWORK_KEY = pytest.StashKey[netns.TestNetwork]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Move the whole session into a network namespace of its own, before anything starts.

    The real node needs a non-loopback node address, and test traffic may only go to loopback
    or into namespaces the test bed made: inside this one, loopback behaves as before for
    every other test, the node's address exists, and nothing outside can be reached. Without
    root (no namespace can be made) the session stays where it is and the real-node tests say
    why they cannot run. A namespace left by a crashed session is removed first.
    """
    if os.geteuid() != 0 or netns.entered() is not None:
        return
    if os.environ.get("ELASTISERVE_TEST_NETNS"):
        return  # already inside one (a shell opened into `up --real-node`'s namespace)
    netns.sweep_stale()
    net = netns.create(netns.name_for(os.getpid()))
    try:
        netns.enter(net)
    except BaseException:
        netns.delete(net.name)
        raise
    config.stash[_NETWORK_KEY] = net


def pytest_unconfigure(config: pytest.Config) -> None:
    net = config.stash.get(_NETWORK_KEY, None)
    if net is not None:
        netns.leave()
        netns.delete(net.name)


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


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A control plane with one real node (kubelet, containerd, kube-proxy), no kwok nodes.

    The node holds the harness's own pause and echo images; tests that need the product's
    images ask for ``product_images_on_node``. Teardown asserts that no process, mount,
    cgroup or changed sysctl of the node is left.
    """
    from elastiserve.testing.testbed import real_cluster

    timeout_s = float(os.environ.get(START_TIMEOUT_ENV, "120"))
    with real_cluster(tmp_path_factory.mktemp("realcluster"), timeout_s=timeout_s) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def product_images() -> Any:
    """The product's images (operator, serving), built from docker/ or reused from the cache.

    Built outside the test network (the builds reach the package registries); a failure
    fails the tests that need them with the builder's own words.
    """
    from elastiserve.testing.images import ensure_images

    return ensure_images()


@pytest.fixture(scope="session")
def product_images_on_node(real_cluster: Any, product_images: Any) -> Any:
    """``product_images``, imported into the real node's containerd (once per session)."""
    for image in product_images.values():
        real_cluster.node.import_image(image.archive)
    return product_images
