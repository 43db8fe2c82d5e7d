"""A clean stop: SIGTERM (what a rolling update or ``helm upgrade`` sends the operator pod)
ends the operator with exit code 0 and no traceback in its log.

Against the real API server, with one model whose policy daemon runs: the stop has to end
kopf's root tasks, our daemon, the cleanup handler and everything they started.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from elastiserve.testing.ports import free_port

from .cluster_harness import GROUP, PLURAL, VERSION, OperatorProcess, wait_for
from .test_operator_cluster import installed, model_spec, namespace, operator_kubeconfig

__all__ = ["installed", "namespace", "operator_kubeconfig"]  # fixtures used below

pytestmark = [pytest.mark.controlplane, pytest.mark.slow]


def test_sigterm_exits_zero_without_traceback(
    tmp_path: Path, operator_kubeconfig: Path, namespace: str, kube_client: Any
) -> None:
    from kubernetes import client as k8s

    crs = k8s.CustomObjectsApi(kube_client)
    crs.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ElasticModel",
        "metadata": {"name": "m1"}, "spec": model_spec(),
    })
    # No Prometheus: the daemon's evaluations fail fast (connection refused) and are logged;
    # what matters here is that the daemon and every other task are running at the stop.
    operator = OperatorProcess(
        kubeconfig=operator_kubeconfig, log_path=tmp_path / "operator.log",
        prometheus_url=f"http://127.0.0.1:{free_port()}", namespaces=(namespace,),
    ).start()
    try:
        wait_for(lambda: "Handler 'ensure' succeeded." in operator.log_path.read_text(),
                 "the operator's first reconcile", timeout_s=60, show=operator.log_tail)
        wait_for(lambda: "cannot reach Prometheus" in operator.log_path.read_text(),
                 "the policy daemon's first evaluation", timeout_s=30, show=operator.log_tail)
        assert operator.process is not None
        # The stop has to meet events of the model still queued in kopf (what a busy
        # operator has at any stop): frozen, the operator cannot handle the patches' events
        # before the signal; thawed, it reads them and the signal together.
        os.kill(operator.process.pid, signal.SIGSTOP)
        try:
            _patch_and_await_dispatch(crs, namespace, "m1", patches=5)
            operator.process.send_signal(signal.SIGTERM)
        finally:
            os.kill(operator.process.pid, signal.SIGCONT)
        try:
            code = operator.process.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail("the operator did not exit within 30 s of SIGTERM:\n"
                        + operator.log_tail())
    finally:
        operator.kill()
    log = operator.log_path.read_text(errors="replace")
    assert "Signal SIGTERM is received" in log, operator.log_tail()
    assert "Traceback" not in log, operator.log_tail(60)
    # kopf cancels only the daemons still running after its last 5 s wait: one started
    # again from a queued event after the stop (and ran on the closed sessions).
    assert "Daemon 'policy_loop' is cancelled" not in log, operator.log_tail(60)
    assert code == 0, operator.log_tail()


def _patch_and_await_dispatch(crs: Any, namespace: str, name: str, patches: int) -> None:
    """Patch an annotation of the model ``patches`` times, then return once the API server
    has dispatched the last write to watchers (our own watch from before the first patch
    sees it; the operator's watch is served by the same watch cache)."""
    from kubernetes import watch

    start = crs.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    last = ""
    for tick in range(patches):
        patched = crs.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name,
            {"metadata": {"annotations": {"test.elastiserve.io/tick": str(tick)}}})
        last = patched["metadata"]["resourceVersion"]
    stream = watch.Watch()  # type: ignore[no-untyped-call]
    for event in stream.stream(  # type: ignore[no-untyped-call]
        crs.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
        field_selector=f"metadata.name={name}",
        resource_version=start["metadata"]["resourceVersion"], timeout_seconds=20,
    ):
        if event["object"]["metadata"]["resourceVersion"] == last:
            stream.stop()  # type: ignore[no-untyped-call]
            return
    raise AssertionError(f"the API server did not dispatch {name}'s patch {last} in 20 s")
