"""The API server's aggregation layer: the front-proxy certificates and the flags that use them.

An extension API server (metrics-server, a custom-metrics adapter) is reached *through*
kube-apiserver: the server authenticates the client, then proxies the request with the
client's identity in ``X-Remote-User``/``X-Remote-Group`` headers, over TLS with a client
certificate of its own (the "front proxy" certificate). The extension server believes those
headers only from a certificate signed by the request-header CA and named in the allowed
names. Upstream keeps that CA apart from the cluster's client CA (a client certificate of the
cluster must not be able to claim to be the proxy), and so does this module: its own CA in
``<pki>/front-proxy/``.

The real-node control plane starts with these flags (``ControlPlane.start`` with ``node_ip``);
the kwok plane does not need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from elastiserve.testing.certs import VALID_DAYS, _ec_key, _openssl, _signed_cert

PROXY_CLIENT_NAME = "front-proxy-client"
"""The front-proxy certificate's common name: the one name the extension servers accept."""


@dataclass(frozen=True)
class FrontProxyPki:
    """The request-header CA and the API server's proxy client certificate signed by it."""

    ca_cert: Path
    client_cert: Path
    client_key: Path


def make_front_proxy_pki(directory: Path) -> FrontProxyPki:
    """A request-header CA of its own in ``directory`` and the proxy's client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    _ec_key(directory / "ca.key")
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=elastiserve-front-proxy-ca",
        "-days", VALID_DAYS, "-sha256", "-out", "ca.crt",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=directory,
    )
    _signed_cert(
        directory, "proxy-client", f"/CN={PROXY_CLIENT_NAME}",
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
    )
    return FrontProxyPki(
        ca_cert=directory / "ca.crt",
        client_cert=directory / "proxy-client.crt",
        client_key=directory / "proxy-client.key",
    )


def apiserver_flags(front: FrontProxyPki) -> list[str]:
    """kube-apiserver's aggregation flags (the set kubeadm writes).

    ``--enable-aggregator-routing``: the server dials an APIService's endpoint (from the
    Service's EndpointSlice) instead of its ClusterIP, so an extension server that runs as a
    process of the test bed (not a pod) is reached at the address it listens on.
    """
    return [
        f"--requestheader-client-ca-file={front.ca_cert}",
        f"--requestheader-allowed-names={PROXY_CLIENT_NAME}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={front.client_cert}",
        f"--proxy-client-key-file={front.client_key}",
        "--enable-aggregator-routing=true",
    ]
