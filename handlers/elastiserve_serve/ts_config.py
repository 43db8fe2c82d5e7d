"""TorchServe's ``config.properties`` for elastiserve: a safe configuration, each key explained.

Pure: builds text from a :class:`ServeConfig`; :mod:`.ts_server` writes and runs it. TorchServe
0.12 property names were checked against its frontend (``ConfigManager``) and launcher.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Environment variables whose names look like credentials are not passed to Python workers:
# handler code (and anything it imports) never needs them.
SECRET_ENV_PATTERN = (
    r".*(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|PRIVATE|AUTH).*"
    r"|AWS_.*|GOOGLE_APPLICATION_CREDENTIALS|AZURE_.*|KUBECONFIG"
)

MAX_REQUEST_SIZE = 8 * 1024 * 1024 + 64 * 1024
"""Largest request body TorchServe accepts (the handler's 8 MiB body limit plus headroom for
a form's framing); the gateway refuses larger bodies with 413 before forwarding them."""


@dataclass(frozen=True)
class ServeConfig:
    """What varies between deployments; everything else is fixed to the safe choice."""

    model_store: Path
    models: Sequence[str]  # "name=file.mar" registered at startup (the model API is off)
    metrics_config: Path
    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    bind_host: str = "127.0.0.1"  # inference; management always stays on loopback
    # Metrics: loopback locally; a pod binds all addresses so that Prometheus, which scrapes
    # the pod IP from outside the pod, can reach it (the endpoint is read-only).
    metrics_host: str = "127.0.0.1"
    # TorchServe 0.12 always starts its gRPC listeners (no switch turns them off); the fixed
    # defaults 7070/7071 make a second server on the same host exit at startup.
    grpc_inference_port: int = 7070
    grpc_management_port: int = 7071
    max_request_size: int = MAX_REQUEST_SIZE
    max_response_size: int = 1024 * 1024
    token_expiration_min: int = 720
    token_authorization: bool = True
    """False only behind an authenticating gateway (``elastiserve serve --key-file``, which
    then binds inference to loopback): otherwise every client on the network may infer."""
    job_queue_size: int = 100
    netty_threads: int = 2
    jvm_heap_mb: int = 512


def config_properties(cfg: ServeConfig) -> str:
    """The ``config.properties`` text, with a comment on each choice."""
    store = cfg.model_store.resolve()
    lines = [
        "# Written by `elastiserve serve`; each key says why it has this value.",
        "# Inference may leave the host (bind_host); management never does: nothing off-host",
        "# can manage models.",
        f"inference_address=http://{cfg.bind_host}:{cfg.inference_port}",
        f"management_address=http://127.0.0.1:{cfg.management_port}",
        "# Metrics are read-only; a pod binds them to all addresses so Prometheus can scrape it.",
        f"metrics_address=http://{cfg.metrics_host}:{cfg.metrics_port}",
        "# gRPC cannot be disabled in TorchServe 0.12: loopback only, on ports of its own.",
        "grpc_inference_address=127.0.0.1",
        f"grpc_inference_port={cfg.grpc_inference_port}",
        "grpc_management_address=127.0.0.1",
        f"grpc_management_port={cfg.grpc_management_port}",
        *([
            "# Token authorisation is on (TorchServe 0.12's default); keys land in",
            "# key_file.json in the server's working directory.",
            "disable_token_authorization=false",
            f"token_expiration_min={cfg.token_expiration_min}",
        ] if cfg.token_authorization else [
            "# Token authorisation is OFF (asked for: several replicas behind one Service cannot",
            "# share TorchServe's per-server keys); an authenticating gateway fronts this server.",
            "disable_token_authorization=true",
        ]),
        "# The model registration API is off: the models below are registered at startup and",
        "# nobody can register an archive from a URL at runtime.",
        "enable_model_api=false",
        f"load_models={','.join(cfg.models)}",
        f"model_store={store}",
        "# Were registration ever enabled, only archives already in the model store qualify.",
        f"allowed_urls={_properties_escape(f'file://{re.escape(str(store))}/[^/]+[.]mar')}",
        "# Bodies larger than this are refused by the frontend before a worker sees them.",
        f"max_request_size={cfg.max_request_size}",
        f"max_response_size={cfg.max_response_size}",
        f"job_queue_size={cfg.job_queue_size}",
        "# Workers get raw bytes; our decoder parses JSON itself, with its own limits.",
        "decode_input_request=false",
        "# Credentials in the environment stay out of worker processes.",
        f"blacklist_env_vars={SECRET_ENV_PATTERN}",
        "# No pip installs from an archive's requirements file at load time.",
        "install_py_dep_per_model=false",
        "# Configuration comes from this file only, not from TS_* environment variables.",
        "enable_envvars_config=false",
        "# Prometheus format on the metrics port, with our declared model metrics.",
        "metrics_mode=prometheus",
        f"metrics_config={cfg.metrics_config.resolve()}",
        "enable_metrics_api=true",
        "# Host metrics are the node agent's job; skipping them saves a process every minute.",
        "disable_system_metrics=true",
        f"number_of_netty_threads={cfg.netty_threads}",
        f"netty_client_threads={cfg.netty_threads}",
        f"vmargs=-Xmx{cfg.jvm_heap_mb}m -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError",
    ]
    return "\n".join(lines) + "\n"


def _properties_escape(value: str) -> str:
    """Java ``Properties`` treats backslash as an escape: double it so regexes survive."""
    return value.replace("\\", "\\\\")
