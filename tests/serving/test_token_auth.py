"""TorchServe with its key check off, and the pod's switch for it.

Several replicas behind one Service cannot share TorchServe's per-server keys, so in a pod
TorchServe runs with its check off behind the gateway (``--key-file``: the model's one key;
``--gateway``: no key, for ``spec.serving.tokenAuthorization: Disabled``). Checked on a real
TorchServe: with the check off it answers without a key and writes no key file; and the pod
the operator builds passes switches the serving CLI accepts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from elastiserve.cli import parser_for
from elastiserve_operator.children import Owner, build_deployment
from elastiserve_operator.settings import OperatorSettings
from elastiserve_operator.spec import parse_spec
from elastiserve_serve.archive import ArchiveSpec, build_archive
from elastiserve_serve.ts_config import ServeConfig, config_properties
from elastiserve_serve.ts_server import run_torchserve

from .bundles import make_bundle
from .tiny import png_bytes

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]


def test_config_turns_the_check_off_only_when_asked(tmp_path: Path) -> None:
    on = config_properties(ServeConfig(tmp_path, ("m=m.mar",), tmp_path / "metrics.yaml"))
    off = config_properties(ServeConfig(tmp_path, ("m=m.mar",), tmp_path / "metrics.yaml",
                                        token_authorization=False))
    assert "disable_token_authorization=false" in on.splitlines()
    assert "disable_token_authorization=true" in off.splitlines()
    assert not any(line.startswith("token_expiration_min") for line in off.splitlines())


@pytest.mark.parametrize(("auth", "key_file", "gateway"), [
    ("Enabled", "/var/run/secrets/elastiserve/inference/key", False),
    ("Disabled", None, True),
])
def test_pod_auth_args_are_accepted_by_the_serving_cli(
    auth: str, key_file: str | None, gateway: bool,
) -> None:
    spec = parse_spec({"model": {"levelCount": 2, "source": {"localPath": "/m/m.mar"}},
                       "objective": {"p95Ms": 100}, "replicas": 3,
                       "serving": {"tokenAuthorization": auth}})
    pod = build_deployment(Owner("m", "ns", "u"), spec, OperatorSettings())
    serving = pod["spec"]["template"]["spec"]["containers"][0]
    argv = [str(a) for a in serving["args"]]  # "serve", then its options
    args = parser_for(argv).parse_args(argv)
    assert (str(args.key_file) if args.key_file else None) == key_file
    assert args.gateway is gateway
    assert args.disable_token_auth is False  # the gateway turns TorchServe's check off


def test_torchserve_answers_without_a_key_when_the_check_is_off(tmp_path: Path) -> None:
    assert shutil.which("java") is not None, "TorchServe needs Java 17 on PATH"
    bundle = make_bundle(tmp_path / "bundle")
    spec = ArchiveSpec(workers=1, batch_size=1, max_batch_delay_ms=5,
                       handler={"control_file": str(tmp_path / "shm" / "level.json"),
                                "threads": 1})
    build_archive(bundle, tmp_path / "store", "open", spec)
    with run_torchserve(tmp_path / "run", tmp_path / "store", ["open=open.mar"],
                        token_authorization=False) as server:
        response = httpx.post(f"{server.inference_url}/predictions/open",
                              content=png_bytes(), headers={"Content-Type": "image/png"},
                              timeout=30)
        assert response.status_code == 200, response.text
        assert "level" in response.json()
        assert not (server.run_dir / "key_file.json").exists()
