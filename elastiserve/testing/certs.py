"""A throwaway PKI for one control plane, made with the ``openssl`` command.

The API server insists on TLS and on a service-account signing key; RBAC needs a client
identity. A per-run CA keeps runs independent. ``openssl`` (installed by ``make test`` when
missing) adds no Python dependency; EC P-256 keys make generation near-instant.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from elastiserve.testing.errors import ControlPlaneError

VALID_DAYS = "30"
ADMIN_USER = "elastiserve-admin"
# Membership of system:masters bypasses RBAC: the harness itself must work before any role
# exists. Tests of RBAC create their own identities (e.g. by impersonation).
ADMIN_GROUP = "system:masters"

SERVER_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class Pki:
    """Paths of the files one control plane needs."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise ControlPlaneError("the 'openssl' command is needed to make test certificates")
    done = subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise ControlPlaneError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def _ec_key(path: Path) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-out", str(path), cwd=path.parent,
    )


def _signed_cert(directory: Path, stem: str, subject: str, extensions: str) -> None:
    key, csr, cert = (directory / f"{stem}.{ext}" for ext in ("key", "csr", "crt"))
    ext_file = directory / f"{stem}.ext"
    _ec_key(key)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr), cwd=directory)
    ext_file.write_text(extensions, encoding="utf-8")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", VALID_DAYS, "-sha256",
        "-extfile", str(ext_file), "-out", str(cert), cwd=directory,
    )
    csr.unlink()
    ext_file.unlink()


def make_pki(directory: Path, service_ip: str, extra_ips: tuple[str, ...] = ()) -> Pki:
    """Create the CA, serving cert, admin client cert and service-account key pair.

    ``extra_ips`` are more addresses the API server answers on (the real node's IP, which
    the ``kubernetes`` Service's endpoint points at, so pods reach the server through it).
    """
    directory.mkdir(parents=True, exist_ok=True)
    _ec_key(directory / "ca.key")
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=elastiserve-test-ca",
        "-days", VALID_DAYS, "-sha256", "-out", "ca.crt",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=directory,
    )
    names = ",".join(f"DNS:{name}" for name in SERVER_NAMES)
    ips = "".join(f"IP:{ip}," for ip in extra_ips)
    _signed_cert(
        directory, "apiserver", "/CN=kube-apiserver",
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName=IP:127.0.0.1,IP:{service_ip},{ips}{names}\n",
    )
    _signed_cert(
        directory, "admin", f"/O={ADMIN_GROUP}/CN={ADMIN_USER}",
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
    )
    _ec_key(directory / "sa.key")
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    return Pki(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "apiserver.crt",
        server_key=directory / "apiserver.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
    )


def make_client_cert(pki: Pki, stem: str, user: str, group: str | None = None) -> tuple[Path, Path]:
    """A client certificate for ``user`` (in ``group``) signed by the run's CA: (cert, key).

    The real node's kubelet is ``system:node:<name>`` in ``system:nodes`` (the Node
    authoriser's identity) and kube-proxy is ``system:kube-proxy`` (bound to the built-in
    ``system:node-proxier`` role): neither gets more than its upstream counterpart.
    """
    directory = pki.ca_cert.parent
    subject = (f"/O={group}" if group else "") + f"/CN={user}"
    _signed_cert(
        directory, stem, subject,
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
    )
    return directory / f"{stem}.crt", directory / f"{stem}.key"
