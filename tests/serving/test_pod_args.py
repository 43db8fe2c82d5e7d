"""The operator's pod spec against the serving side's real command lines and configuration.

The Deployment is built by the operator (no torch there) and run by the serving image (no kopf
there); nothing else checks that the arguments one writes are the ones the other accepts, or
that the ports the container declares are the ones TorchServe binds.
"""

from __future__ import annotations

from pathlib import Path

from elastiserve.cli import parser_for
from elastiserve_operator.children import (
    INFERENCE_PORT,
    METRICS_PORT,
    Owner,
    build_deployment,
)
from elastiserve_operator.settings import OperatorSettings
from elastiserve_operator.spec import parse_spec
from elastiserve_serve.level_source_k8s import build_parser as agent_parser
from elastiserve_serve.ts_config import ServeConfig, config_properties

SPEC = {
    "model": {"levelCount": 3, "source": {"localPath": "/models/m.mar"}},
    "objective": {"p95Ms": 100},
}


def containers() -> dict[str, dict[str, object]]:
    deployment = build_deployment(Owner("m", "ns", "u"), parse_spec(SPEC), OperatorSettings())
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and
             not line.startswith("#"))
    return {k: v for k, v in pairs}


def test_serving_container_args_parse_and_bind_what_the_pod_declares() -> None:
    serving = containers()["torchserve"]
    argv = [str(a) for a in serving["args"]]  # type: ignore[attr-defined]
    args = parser_for(argv).parse_args(argv)
    assert (args.bind, args.port) == ("0.0.0.0", INFERENCE_PORT)
    assert (args.metrics_bind, args.metrics_port) == ("0.0.0.0", METRICS_PORT)
    declared = {p["name"]: p["containerPort"] for p in serving["ports"]}  # type: ignore[attr-defined]
    assert declared == {"http": INFERENCE_PORT, "metrics": METRICS_PORT}


def test_serving_args_carry_the_crs_serving_settings_and_the_key_file() -> None:
    serving = containers()["torchserve"]
    argv = [str(a) for a in serving["args"]]  # type: ignore[attr-defined]
    args = parser_for(argv).parse_args(argv)
    assert (args.workers, args.batch_size, args.max_batch_delay_ms) == (1, 1, 10)
    assert args.allow_pin is False  # explicit: the archive's own value must not win
    mounts = {m["mountPath"] for m in serving["volumeMounts"]}  # type: ignore[attr-defined]
    assert args.key_file is not None and str(args.key_file.parent) in mounts


def test_agent_args_parse_and_carry_no_level_names() -> None:
    agent = containers()["level-agent"]
    args = agent_parser().parse_args([*agent["args"]])  # type: ignore[misc]
    assert (args.namespace, args.name) == ("ns", "m")
    assert "--level-names" not in agent["args"]  # type: ignore[operator]


def test_metrics_bind_is_loopback_unless_asked_and_management_always_is() -> None:
    base = ServeConfig(Path("/store"), ["m=m.mar"], Path("/metrics.yaml"))
    local = properties(config_properties(base))
    assert local["metrics_address"] == "http://127.0.0.1:8082"
    assert local["inference_address"] == "http://127.0.0.1:8080"
    pod = properties(config_properties(
        ServeConfig(Path("/store"), ["m=m.mar"], Path("/metrics.yaml"),
                    bind_host="0.0.0.0", metrics_host="0.0.0.0")
    ))
    assert pod["metrics_address"] == "http://0.0.0.0:8082"
    assert pod["inference_address"] == "http://0.0.0.0:8080"
    assert pod["management_address"] == "http://127.0.0.1:8081"


def test_agent_writes_the_control_file_the_handler_reads_by_default() -> None:
    # An archive built with default settings must follow the level in a pod: the agent's
    # --control-file, the volume both containers mount, and the handler's default agree.
    from elastiserve_operator.children import CONTROL_DIR, CONTROL_FILE
    from elastiserve_serve.runtime.settings import DEFAULT_CONTROL_FILE

    pod = containers()
    agent_args: list[str] = pod["level-agent"]["args"]  # type: ignore[assignment]
    args = agent_parser().parse_args([str(a) for a in agent_args])
    assert Path(args.control_file) == DEFAULT_CONTROL_FILE == Path(CONTROL_FILE)
    mounts: set[str] = set()
    for container in pod.values():
        volume_mounts: list[dict[str, str]] = container["volumeMounts"]  # type: ignore[assignment]
        mounts.update(m["mountPath"] for m in volume_mounts)
    assert CONTROL_DIR in mounts
