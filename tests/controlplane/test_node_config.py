"""The real node's configuration files, checked without starting anything."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

from elastiserve.testing import node_config as cfg
from elastiserve.testing.pause_image import ECHO_REPOSITORY, write_pause_image


@pytest.fixture
def layout(tmp_path: Path) -> cfg.NodeLayout:
    return cfg.NodeLayout(
        root=tmp_path / "node",
        node_ip="10.213.0.2",
        ports=cfg.NodePorts(kubelet=1, kubelet_healthz=2, proxy_healthz=3, proxy_metrics=4),
        sandbox_image="localhost/elastiserve/pause:abc",
        ca_cert=tmp_path / "ca.crt",
        kubelet_kubeconfig=tmp_path / "k",
        proxy_kubeconfig=tmp_path / "p",
        cgroup_root="elastiserve-42",
    )


def _inside(path: str, root: Path) -> bool:
    return Path(path).is_relative_to(root)


class TestContainerd:
    def test_every_path_is_inside_the_run_directory(self, layout: cfg.NodeLayout) -> None:
        conf = tomllib.loads(cfg.containerd_config(layout))
        assert _inside(conf["root"], layout.root)
        assert _inside(conf["state"], layout.root)
        assert _inside(conf["grpc"]["address"], layout.root)
        cri = conf["plugins"]["io.containerd.grpc.v1.cri"]
        assert _inside(cri["cni"]["conf_dir"], layout.root)
        assert cri["netns_mounts_under_state_dir"] is True

    def test_what_this_machine_needs(self, layout: cfg.NodeLayout) -> None:
        cri = tomllib.loads(cfg.containerd_config(layout))["plugins"]["io.containerd.grpc.v1.cri"]
        assert cri["sandbox_image"] == layout.sandbox_image
        assert cri["restrict_oom_score_adj"] is True
        assert cri["disable_apparmor"] is True
        runc = cri["containerd"]["runtimes"]["runc"]
        assert runc["runtime_type"] == "io.containerd.runc.v2"
        assert runc["options"]["SystemdCgroup"] is False


class TestKubelet:
    def test_cgroup_v1_cgroupfs_and_its_own_cgroup_root(self, layout: cfg.NodeLayout) -> None:
        conf = yaml.safe_load(cfg.kubelet_config(layout))
        assert conf["failCgroupV1"] is False
        assert conf["cgroupDriver"] == "cgroupfs"
        assert conf["cgroupRoot"] == "/elastiserve-42"

    def test_no_anonymous_access_and_no_read_only_port(self, layout: cfg.NodeLayout) -> None:
        conf = yaml.safe_load(cfg.kubelet_config(layout))
        assert conf["readOnlyPort"] == 0
        assert conf["authentication"]["anonymous"]["enabled"] is False
        assert conf["authentication"]["x509"]["clientCAFile"] == str(layout.ca_cert)

    def test_eviction_and_image_gc_cannot_interrupt_a_test(self, layout: cfg.NodeLayout) -> None:
        conf = yaml.safe_load(cfg.kubelet_config(layout))
        assert set(conf["evictionHard"].values()) == {"0%"}
        assert conf["imageGCHighThresholdPercent"] == 100

    def test_flags_name_the_node_and_its_address(self, layout: cfg.NodeLayout) -> None:
        argv = cfg.kubelet_argv(Path("/k"), layout, layout.root / "pki")
        assert f"--node-ip={layout.node_ip}" in argv
        assert f"--hostname-override={cfg.NODE_NAME}" in argv
        assert f"--root-dir={layout.kubelet_dir}" in argv


class TestKubeProxy:
    def test_leaves_global_conntrack_settings_alone(self, layout: cfg.NodeLayout) -> None:
        conf = yaml.safe_load(cfg.proxy_config(layout))
        assert conf["mode"] == "iptables"
        assert conf["conntrack"]["maxPerCore"] == 0
        assert conf["conntrack"]["tcpEstablishedTimeout"] == "0s"
        assert conf["iptables"]["localhostNodePorts"] is False


class TestCni:
    def test_bridge_with_addresses_kept_in_the_run_directory(
        self, layout: cfg.NodeLayout
    ) -> None:
        conf = json.loads(cfg.cni_conflist(layout))
        bridge = conf["plugins"][0]
        assert bridge["type"] == "bridge"
        assert bridge["ipMasq"] is False
        assert _inside(bridge["ipam"]["dataDir"], layout.root)
        assert bridge["ipam"]["ranges"][0][0]["subnet"] == cfg.POD_SUBNET


class TestSandboxImage:
    def test_deterministic_and_tagged_by_digest(self, tmp_path: Path) -> None:
        binary = tmp_path / "pause"
        binary.write_bytes(b"\x7fELF pretend")
        first = write_pause_image(binary, tmp_path / "a")
        second = write_pause_image(binary, tmp_path / "b")
        assert first.ref == second.ref
        assert first.archive.read_bytes() == second.archive.read_bytes()
        binary.write_bytes(b"\x7fELF changed")
        assert write_pause_image(binary, tmp_path / "c").ref != first.ref

    def test_oci_layout_names_the_image_and_its_entrypoint(self, tmp_path: Path) -> None:
        binary = tmp_path / "pause"
        binary.write_bytes(b"x")
        image = write_pause_image(binary, tmp_path, repository=ECHO_REPOSITORY,
                                  entrypoint=("/pause", "-http"))
        with tarfile.open(image.archive) as tar:
            names = set(tar.getnames())
            index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
            manifest_digest = index["manifests"][0]["digest"].removeprefix("sha256:")
            manifest = json.load(tar.extractfile(f"blobs/sha256/{manifest_digest}"))  # type: ignore[arg-type]
            config_digest = manifest["config"]["digest"].removeprefix("sha256:")
            config = json.load(tar.extractfile(f"blobs/sha256/{config_digest}"))  # type: ignore[arg-type]
        assert "oci-layout" in names
        assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == image.ref
        assert image.ref.startswith(ECHO_REPOSITORY + ":")
        assert config["config"]["Entrypoint"] == ["/pause", "-http"]
        assert config["config"]["User"] == "65535:65535"


class TestPodDiscovery:
    """What the test bed's stand-in for Kubernetes service discovery hands Prometheus."""

    def test_annotated_running_pods_with_an_ip_and_port_only(self) -> None:
        from elastiserve.testing.pod_discovery import targets_for

        def pod(name: str, **over: Any) -> dict[str, Any]:
            base: dict[str, Any] = {
                "metadata": {"name": name, "namespace": "ml",
                             "annotations": {"prometheus.io/scrape": "true",
                                             "prometheus.io/port": "8082"}},
                "spec": {"nodeName": "n1"},
                "status": {"phase": "Running", "podIP": "10.244.0.5"},
            }
            for key, value in over.items():
                base[key] = {**base[key], **value}
            return base

        pods = [
            pod("good"),
            pod("pending", status={"phase": "Pending"}),
            pod("no-ip", status={"podIP": None}),
            pod("opted-out", metadata={"annotations": {"prometheus.io/port": "8082"}}),
            pod("bad-port", metadata={"annotations": {"prometheus.io/scrape": "true",
                                                      "prometheus.io/port": "x"}}),
            pod("leaving", metadata={"deletionTimestamp": "2026-01-01T00:00:00Z"}),
        ]
        assert targets_for(pods) == [{
            "targets": ["10.244.0.5:8082"],
            "labels": {"namespace": "ml", "pod": "good", "node": "n1"},
        }]
