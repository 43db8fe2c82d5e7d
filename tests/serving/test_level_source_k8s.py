"""The level agent's Kubernetes source against a real API server, with the per-model Role.

The agent authenticates with a TokenRequest token of the per-model ServiceAccount whose
Role allows get/list/watch on one ElasticModel by name (what the operator creates), and
must follow ``status.activeLevel`` into the control file within the 2 s budget.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from elastiserve.testing.controlplane import ControlPlane
from elastiserve_operator.children import Owner, build_rbac, names_for
from elastiserve_serve.level_agent import LevelAgent
from elastiserve_serve.level_source_k8s import (
    NODE_NAME_ENV,
    Connection,
    K8sLevelSource,
    build_parser,
    decision_from_object,
)
from elastiserve_serve.runtime.control import read_control_file
from tests.operator.cluster_harness import GROUP, PLURAL, VERSION, install, token_kubeconfig

pytestmark = [pytest.mark.controlplane]


def test_decision_is_the_index_as_decided() -> None:
    # The runtime resolves the index against the bundle; the agent needs no level names.
    obj: dict[str, Any] = {"status": {"activeLevel": 1}, "spec": {"allowRequestPinning": True}}
    decision = decision_from_object(obj)
    assert decision is not None and (decision.level, decision.allow_pin) == (1, True)
    assert decision_from_object({"status": {"activeLevel": 0}}).level == 0  # type: ignore[union-attr]
    for status in ({}, {"activeLevel": -1}, {"activeLevel": True}, {"activeLevel": "1"}):
        assert decision_from_object({"status": status}) is None


@pytest.mark.parametrize(
    ("status", "node", "level"),
    [
        ({"activeLevel": 3, "nodeCaps": {"n1": 1}}, "n1", 1),  # capped node: the cap
        ({"activeLevel": 3, "nodeCaps": {"n1": 1}}, "n2", 3),  # another node's cap
        ({"activeLevel": 3, "nodeCaps": {"n1": 1}}, None, 3),  # node unknown: model level
        ({"activeLevel": 1, "nodeCaps": {"n1": 2}}, "n1", 1),  # a cap never widens
        ({"activeLevel": 3, "nodeCaps": {"n1": -1}}, "n1", 3),  # malformed caps: ignored
        ({"activeLevel": 3, "nodeCaps": {"n1": "0"}}, "n1", 3),
        ({"activeLevel": 3, "nodeCaps": {"n1": True}}, "n1", 3),
        ({"activeLevel": 3, "nodeCaps": ["n1"]}, "n1", 3),
        ({"activeLevel": 2, "nodeCaps": {"n1": 0}}, "n1", 0),
    ],
)
def test_node_cap_lowers_the_level(status: dict[str, Any], node: str | None, level: int) -> None:
    decision = decision_from_object({"status": status}, node)
    assert decision is not None and decision.level == level


def test_no_level_without_active_level_even_with_a_cap() -> None:
    assert decision_from_object({"status": {"nodeCaps": {"n1": 0}}}, "n1") is None


def test_pod_hands_the_agent_its_node_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # The operator's Deployment sets the variable from the downward API; the agent reads it.
    from elastiserve_operator.children import build_deployment
    from elastiserve_operator.settings import OperatorSettings
    from elastiserve_operator.spec import parse_spec

    spec = parse_spec({"model": {"levelCount": 3, "source": {"localPath": "/m.mar"}},
                       "objective": {"p95Ms": 100}})
    pod = build_deployment(Owner("m", "ns", "u"), spec, OperatorSettings())
    agent = next(c for c in pod["spec"]["template"]["spec"]["containers"]
                 if c["name"] == "level-agent")
    (env,) = agent["env"]
    assert env == {"name": NODE_NAME_ENV,
                   "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    monkeypatch.setenv(NODE_NAME_ENV, "jetson-orin-nano-0")
    assert build_parser().parse_args(agent["args"]).node_name == "jetson-orin-nano-0"
    monkeypatch.delenv(NODE_NAME_ENV)
    assert build_parser().parse_args(agent["args"]).node_name is None


def _status(crs: Any, namespace: str, name: str, level: int, **extra: Any) -> None:
    crs.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": {"activeLevel": level, **extra}}
    )


def test_agent_follows_status_with_one_object_role(
    control_plane: ControlPlane, kube_client: Any, kube_namespace: str, tmp_path: Path
) -> None:
    from kubernetes import client as k8s

    install(control_plane)
    crs = k8s.CustomObjectsApi(kube_client)
    ns = kube_namespace
    spec = {"model": {"levelCount": 3, "source": {"localPath": "/m.mar"}},
            "objective": {"p95Ms": 100}}
    for name in ("mine", "other"):
        crs.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "ElasticModel",
            "metadata": {"name": name}, "spec": spec})
    mine: Any = crs.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "mine")
    uid = mine["metadata"]["uid"]
    for obj in build_rbac(Owner("mine", ns, uid)):
        control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))
    account = names_for("mine").account
    time.sleep(1.0)  # the RBAC cache of the API server catches up
    kubeconfig = token_kubeconfig(control_plane, kube_client, ns, account, tmp_path / "kc")

    # Only the one object: the other ElasticModel is forbidden to this token.
    kube = ["--kubeconfig", str(kubeconfig)]
    assert control_plane.kubectl(*kube, "auth", "can-i", "watch", "elasticmodels/mine", "-n", ns,
                                 check=False).stdout.strip() == "yes"
    assert control_plane.kubectl(*kube, "auth", "can-i", "get", "elasticmodels/other", "-n", ns,
                                 check=False).stdout.strip() == "no"

    _status(crs, ns, "mine", 2)
    source = K8sLevelSource(
        Connection.from_kubeconfig(kubeconfig), ns, "mine", node="jetson-orin-nx-0"
    ).start()
    control = tmp_path / "shm" / "level.json"
    agent = LevelAgent(source, control)
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop, 0.05), daemon=True)
    runner.start()
    try:
        def wait_level(level: int) -> float:
            start = time.monotonic()
            while time.monotonic() - start < 10:
                state = read_control_file(control) if control.exists() else None
                if state is not None and state.level == level:
                    return time.monotonic() - start
                time.sleep(0.02)
            raise AssertionError(f"control file never showed {level}; error {source.last_error}")

        wait_level(2)
        delays = []
        for level in (0, 1, 2, 0):
            _status(crs, ns, "mine", level)
            delays.append(wait_level(level))
        assert max(delays) < 2.0, delays
        assert source.last_error is None

        # The operator caps this replica's node: the agent serves the cap, then the model's
        # level again when the cap goes (another node's cap never applies here).
        _status(crs, ns, "mine", 2, nodeCaps={"jetson-orin-nx-0": 1, "jetson-agx-orin-0": 0})
        assert wait_level(1) < 2.0
        _status(crs, ns, "mine", 2, nodeCaps=None)
        assert wait_level(2) < 2.0
        _status(crs, ns, "mine", 0)
        wait_level(0)

        # The object goes away (or the API refuses): the last level stays in the file.
        crs.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "mine")
        time.sleep(1.0)
        state = read_control_file(control)
        assert state is not None and state.level == 0
    finally:
        stop.set()
        source.stop()
