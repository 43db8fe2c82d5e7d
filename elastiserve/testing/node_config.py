"""Configuration files of the real node (containerd, CNI, kubelet, kube-proxy), kept pure.

Each function turns a :class:`NodeLayout` (paths and ports under the run directory) into the
text of one file, so the choices can be reviewed in one place and table-tested without a
node. What each choice is for is said next to it; ``../shared/REAL-NODE.md`` records which of
them this kind of machine needs (cgroup v1 in hybrid mode, no AppArmor, runc not crun).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

NODE_NAME = "elastiserve-node"
NODE_LABEL = "elastiserve.io/real-node"
POD_SUBNET = "10.244.0.0/24"
POD_GATEWAY = "10.244.0.1"
CNI_BRIDGE = "es-cni0"
CNI_BIN_DIR = Path("/usr/lib/cni")
CLUSTER_DOMAIN = "cluster.local"

# Kernel settings kubelet writes at start (container_manager_linux.go's setupKernelTunables):
# global, not per namespace, so the harness records them first and puts them back after.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)


@dataclass(frozen=True)
class NodePorts:
    kubelet: int
    kubelet_healthz: int
    proxy_healthz: int
    proxy_metrics: int


@dataclass(frozen=True)
class NodeLayout:
    """Where one real node keeps its state, all of it under ``root``."""

    root: Path
    node_ip: str
    ports: NodePorts
    sandbox_image: str
    ca_cert: Path
    kubelet_kubeconfig: Path
    proxy_kubeconfig: Path
    cgroup_root: str = "elastiserve"
    """Top-level cgroup (in every hierarchy) under which kubelet puts ``kubepods``: one per
    node, so two nodes on one host (a test that crashes one on purpose) never share pods'
    cgroups, and clean-up removes exactly this node's."""
    cluster_cidr: str = "10.244.0.0/16"

    @property
    def containerd_dir(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.containerd_dir / "config.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet-config.yaml"

    @property
    def proxy_config(self) -> Path:
        return self.root / "kube-proxy-config.yaml"

    @property
    def resolv_conf(self) -> Path:
        return self.root / "resolv.conf"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def state_file(self) -> Path:
        return self.root / "realnode.json"


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def containerd_config(lay: NodeLayout) -> str:
    """containerd 1.6 (Debian 12) config version 2, every path inside the run directory.

    Its own socket and root, so a system containerd (if a package install started one) is
    never touched; the CNI network namespaces go under its state directory, so a crashed run's
    are found and removed with the rest.
    """
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    lines = [
        "version = 2",
        f"root = {_toml_string(str(lay.containerd_dir / 'root'))}",
        f"state = {_toml_string(str(lay.containerd_dir / 'state'))}",
        "# Snapshotters this machine cannot use only log errors at start; tracing is noise.",
        'disabled_plugins = ["io.containerd.snapshotter.v1.aufs",'
        ' "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",'
        ' "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp",'
        ' "io.containerd.internal.v1.tracing"]',
        "",
        "[grpc]",
        f"  address = {_toml_string(str(lay.containerd_socket))}",
        "",
        "[ttrpc]",
        f"  address = {_toml_string(str(lay.containerd_socket) + '.ttrpc')}",
        "",
        "[metrics]",
        '  address = ""',
        "",
        f"[{cri}]",
        "  # The sandbox image is built here (nothing can be pulled).",
        f"  sandbox_image = {_toml_string(lay.sandbox_image)}",
        "  # The harness runs as root but must not hand pods a lower oom_score_adj than its own.",
        "  restrict_oom_score_adj = true",
        "  # No AppArmor on this kernel; cgroup v1 here has no hugetlb hierarchy mounted.",
        "  disable_apparmor = true",
        "  tolerate_missing_hugetlb_controller = true",
        "  netns_mounts_under_state_dir = true",
        "  enable_selinux = false",
        f"  [{cri}.containerd]",
        '    snapshotter = "overlayfs"',
        '    default_runtime_name = "runc"',
        f"    [{cri}.containerd.runtimes.runc]",
        '      runtime_type = "io.containerd.runc.v2"',
        f"      [{cri}.containerd.runtimes.runc.options]",
        "        # cgroupfs, not systemd: there is no systemd here. runc, not crun (hybrid v1).",
        "        SystemdCgroup = false",
        f"  [{cri}.cni]",
        f"    bin_dir = {_toml_string(str(CNI_BIN_DIR))}",
        f"    conf_dir = {_toml_string(str(lay.cni_conf_dir))}",
        "    max_conf_num = 1",
        "",
    ]
    return "\n".join(lines)


def cni_conflist(lay: NodeLayout) -> str:
    """A bridge with host-local addresses: pods get a /24 inside the test namespace.

    ``isGateway`` puts the gateway address on the bridge, so the namespace routes to pods and
    pods route to the node IP (the API server, Prometheus) through it. ``hairpinMode`` lets a
    pod reach itself through its Service. No masquerading: nothing leaves the namespace.
    """
    conf = {
        "cniVersion": "1.0.0",
        "name": "elastiserve",
        "plugins": [
            {
                "type": "bridge",
                "bridge": CNI_BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(lay.cni_ipam_dir),
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": POD_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(conf, indent=2) + "\n"


def kubelet_config(lay: NodeLayout) -> str:
    """KubeletConfiguration for one node on this machine.

    ``failCgroupV1: false``: 1.35+ refuses cgroup v1 otherwise, and v1 is what is mounted.
    Eviction and image GC thresholds are off: a test node's disk fill level says nothing about
    the product, and an eviction in the middle of a test would be a false failure. The kubelet
    API accepts the API server's client certificate (x509 against the test CA) and nothing
    anonymous; authorisation is AlwaysAllow because only that certificate can authenticate.
    """
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": lay.node_ip,
        "port": lay.ports.kubelet,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": lay.ports.kubelet_healthz,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{lay.cgroup_root}",
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{lay.containerd_socket}",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(lay.ca_cert)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "evictionHard": {
            "memory.available": "0%",
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "resolvConf": str(lay.resolv_conf),
        "clusterDomain": CLUSTER_DOMAIN,
        "podLogsDir": str(lay.pod_logs),
        "serializeImagePulls": False,
        "registerNode": True,
        "nodeStatusUpdateFrequency": "4s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "0s",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "protectKernelDefaults": False,
        "maxPods": 30,
        # Short grace so teardown does not wait out the default 30 s per pod.
        "shutdownGracePeriod": "0s",
    }
    return yaml.safe_dump(config, sort_keys=False)


def kubelet_argv(binary: Path, lay: NodeLayout, cert_dir: Path) -> list[str]:
    return [
        str(binary),
        f"--config={lay.kubelet_config}",
        f"--kubeconfig={lay.kubelet_kubeconfig}",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={lay.node_ip}",
        f"--root-dir={lay.kubelet_dir}",
        f"--cert-dir={cert_dir}",
        f"--node-labels={NODE_LABEL}=true",
        "--v=1",
    ]


def proxy_config(lay: NodeLayout) -> str:
    """KubeProxyConfiguration: iptables mode, every global knob left alone.

    conntrack's ``maxPerCore: 0`` and zero timeouts mean "do not touch" (those sysctls are
    global); ``masqueradeAll`` sends replies of pod -> Service -> pod on one bridge back the
    way they came without br_netfilter (a global module switch we leave off).
    """
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(lay.proxy_kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "bindAddress": lay.node_ip,
        "healthzBindAddress": f"127.0.0.1:{lay.ports.proxy_healthz}",
        "metricsBindAddress": f"127.0.0.1:{lay.ports.proxy_metrics}",
        "clusterCIDR": lay.cluster_cidr,
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"masqueradeAll": True, "localhostNodePorts": False, "syncPeriod": "10s"},
        "nodePortAddresses": [f"{lay.node_ip}/32"],
    }
    return yaml.safe_dump(config, sort_keys=False)


def proxy_argv(binary: Path, lay: NodeLayout) -> list[str]:
    return [str(binary), f"--config={lay.proxy_config}", "--v=1"]


def containerd_argv(binary: Path, lay: NodeLayout) -> list[str]:
    return [str(binary), f"--config={lay.containerd_config}", "--log-level=warn"]
