"""The kubeconfig file every client of the test bed uses.

Components, ``kubectl``, ``helm`` and the Python client all read the same file, so what a test
does by hand is exactly what the operator sees. Certificates are referenced by path (not
inlined) so that a human debugging a run can inspect them.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from elastiserve.testing.certs import Pki

CONTEXT = "elastiserve-test"


def write_kubeconfig(
    path: Path, server: str, pki: Pki, *, cert: Path | None = None, key: Path | None = None
) -> Path:
    """Write a kubeconfig for ``server`` and return its path: the admin's, unless another
    client certificate (a node's, kube-proxy's) is given."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CONTEXT,
                "cluster": {"server": server, "certificate-authority": str(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate": str(cert or pki.admin_cert),
                    "client-key": str(key or pki.admin_key),
                },
            }
        ],
        "contexts": [
            {"name": CONTEXT, "context": {"cluster": CONTEXT, "user": "admin"}},
        ],
        "current-context": CONTEXT,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    path.chmod(0o600)
    return path
