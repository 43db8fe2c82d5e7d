#!/usr/bin/env bash
# Builds the local Kubernetes test bed binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok, helm, and for the real node kubelet, kube-proxy, the sandbox
# program elastiserve-pause and metrics-server, which the Horizontal Pod Autoscaler reads) from
# the Go module proxy into a cache outside the repo.
#
# Why build instead of download: the only network this project may rely on is the package
# registries, and the Go module proxy is one of them. Each tool is pinned by a scratch module
# under hack/k8s-assets/<group>/ (go.mod + committed go.sum), so a build is reproducible and
# `go build` needs nothing but the proxy.
#
# Where: $ELASTISERVE_ASSETS, else ~/.cache/elastiserve/assets/k8s-<kube version>. The same
# variable is what the Python harness reads, so a user with envtest/kubebuilder binaries can point
# it at theirs: a binary already there that this script did not build is kept, never overwritten.
#
# Idempotent: each binary has a stamp (hash of its module files, this script and the Go version);
# when every stamp matches the script exits in well under a second.
#
# Knobs: ELASTISERVE_GO_BUILD_P (go build -p, default 2: the CI machine has two cores, shared).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly HERE
readonly MODULES="${HERE}/k8s-assets"

if ! command -v go >/dev/null 2>&1; then
  echo "build-k8s-assets: 'go' not found on PATH; install Go >= 1.26 (https://go.dev/dl) or set ELASTISERVE_ASSETS to a directory holding prebuilt binaries" >&2
  exit 2
fi

# module_version GROUP MODULE -> the version that GROUP's go.mod requires for MODULE.
module_version() {
  awk -v m="$2" '$1 == m && $2 ~ /^v/ {print $2; exit}' "${MODULES}/$1/go.mod"
}

KUBE_VERSION="$(module_version kube k8s.io/kubernetes)"
ETCD_VERSION="$(module_version etcd go.etcd.io/etcd/server/v3)"
KWOK_VERSION="$(module_version kwok sigs.k8s.io/kwok)"
HELM_VERSION="$(module_version helm helm.sh/helm/v3)"
METRICS_SERVER_VERSION="$(module_version metrics-server sigs.k8s.io/metrics-server)"
readonly KUBE_VERSION ETCD_VERSION KWOK_VERSION HELM_VERSION METRICS_SERVER_VERSION
for v in KUBE_VERSION ETCD_VERSION KWOK_VERSION HELM_VERSION METRICS_SERVER_VERSION; do
  if [[ -z "${!v}" ]]; then
    echo "build-k8s-assets: could not read ${v} from ${MODULES}/*/go.mod" >&2
    exit 2
  fi
done

readonly DEST="${ELASTISERVE_ASSETS:-${HOME}/.cache/elastiserve/assets/k8s-${KUBE_VERSION}}"
mkdir -p "${DEST}"

# Two invocations at once (two terminals, make -j) must not interleave their writes.
exec 9>"${DEST}/.build.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi

GO_VERSION="$(go env GOVERSION)"
readonly GO_VERSION
SCRIPT_HASH="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-64)"
readonly SCRIPT_HASH

# stamp_for GROUP -> a hash that changes whenever what the group's binaries are built from does.
stamp_for() {
  {
    cat "${MODULES}/$1/go.mod" "${MODULES}/$1/go.sum"
    # A group with its own sources (the pause program) rebuilds when they change.
    find "${MODULES}/$1" -maxdepth 1 -name '*.go' -print0 | sort -z | xargs -0 -r cat
    echo "${SCRIPT_HASH} ${GO_VERSION}"
  } | sha256sum | cut -c1-64
}

# Kubernetes binaries print their version from these variables; unset, they claim
# v0.0.0-master, which also confuses the apiserver's emulation-version checks.
kube_ldflags() {
  local minor="${KUBE_VERSION#v1.}"
  minor="${minor%%.*}"
  local flags="-s -w"
  local pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X ${pkg}.gitVersion=${KUBE_VERSION}"
    flags+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    flags+=" -X ${pkg}.gitTreeState=clean"
    flags+=" -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
  done
  echo "${flags}"
}

built=0
kept=" "
# build NAME GROUP PACKAGE LDFLAGS: builds one binary unless its stamp is current.
build() {
  local name="$1" group="$2" pkg="$3" ldflags="$4"
  local bin="${DEST}/${name}" stampfile="${DEST}/.${name}.stamp"
  local want
  want="$(stamp_for "${group}")"
  if [[ -x "${bin}" && ! -f "${stampfile}" ]]; then
    echo "build-k8s-assets: keeping ${bin} (not built by this script)"
    kept+="${name} "
    return 0
  fi
  if [[ -x "${bin}" && "$(cat "${stampfile}")" == "${want}" ]]; then
    return 0
  fi
  echo "build-k8s-assets: building ${name} (${pkg})"
  local start=${SECONDS}
  # Build next to the target and rename, so an interrupted build never leaves a half binary.
  (
    cd "${MODULES}/${group}"
    CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false -trimpath" \
      nice -n 10 go build -p "${ELASTISERVE_GO_BUILD_P:-2}" -ldflags "${ldflags}" \
      -o "${bin}.tmp" "${pkg}"
  )
  mv -f "${bin}.tmp" "${bin}"
  echo "${want}" >"${stampfile}"
  echo "build-k8s-assets: built ${name} in $((SECONDS - start))s"
  built=$((built + 1))
}

KUBE_LDFLAGS="$(kube_ldflags)"
readonly KUBE_LDFLAGS
build etcd etcd go.etcd.io/etcd/server/v3 "-s -w"
build kube-apiserver kube k8s.io/kubernetes/cmd/kube-apiserver "${KUBE_LDFLAGS}"
build kube-controller-manager kube k8s.io/kubernetes/cmd/kube-controller-manager "${KUBE_LDFLAGS}"
build kube-scheduler kube k8s.io/kubernetes/cmd/kube-scheduler "${KUBE_LDFLAGS}"
build kubectl kube k8s.io/kubernetes/cmd/kubectl "${KUBE_LDFLAGS}"
# The real node: same module, same version stamp as the control plane it joins.
build kubelet kube k8s.io/kubernetes/cmd/kubelet "${KUBE_LDFLAGS}"
build kube-proxy kube k8s.io/kubernetes/cmd/kube-proxy "${KUBE_LDFLAGS}"
# The pod sandbox's program (hack/k8s-assets/pause, standard library only): no registry serves
# the upstream pause image here, so the harness packs this binary into one itself.
build elastiserve-pause pause . "-s -w"
build kwok kwok sigs.k8s.io/kwok/cmd/kwok "-s -w"
# helm's own release build stamps the Kubernetes version it assumes for offline `template` and
# `lint` (capabilities and deprecation checks) from its client-go; without it a plain go build
# says v1.20 and charts declaring `kubeVersion: >=1.27` fail to render offline.
HELM_CLIENT_GO="$(module_version helm k8s.io/client-go)"
HELM_KUBE_MINOR="$(echo "${HELM_CLIENT_GO}" | cut -d. -f2)"
readonly HELM_CLIENT_GO HELM_KUBE_MINOR
HELM_LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  HELM_LDFLAGS+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${HELM_KUBE_MINOR}"
done
build helm helm helm.sh/helm/v3/cmd/helm "${HELM_LDFLAGS}"
# The resource metrics API (metrics.k8s.io) for the HPA tests on the real node: it scrapes the
# kubelet's /metrics/resource and is served through the API server's aggregation layer
# (elastiserve.testing.metrics_server). Its own version variables, as its Makefile sets them.
build metrics-server metrics-server sigs.k8s.io/metrics-server/cmd/metrics-server \
  "-s -w -X sigs.k8s.io/metrics-server/pkg/version.gitVersion=${METRICS_SERVER_VERSION}"

# The VERSIONS file is what the harness and a human read to know what they are running.
versions_tmp="${DEST}/VERSIONS.tmp"
# version_line NAME VERSION MODULE: what VERSIONS says about one binary.
version_line() {
  if [[ "${kept}" == *" $1 "* ]]; then
    echo "$1 unknown provided-by-user"
  else
    echo "$1 $2 $3"
  fi
}
{
  echo "# Built by hack/build-k8s-assets.sh from the Go module proxy with ${GO_VERSION}."
  version_line etcd "${ETCD_VERSION}" go.etcd.io/etcd/server/v3
  version_line kube-apiserver "${KUBE_VERSION}" k8s.io/kubernetes/cmd/kube-apiserver
  version_line kube-controller-manager "${KUBE_VERSION}" \
    k8s.io/kubernetes/cmd/kube-controller-manager
  version_line kube-scheduler "${KUBE_VERSION}" k8s.io/kubernetes/cmd/kube-scheduler
  version_line kubectl "${KUBE_VERSION}" k8s.io/kubernetes/cmd/kubectl
  version_line kubelet "${KUBE_VERSION}" k8s.io/kubernetes/cmd/kubelet
  version_line kube-proxy "${KUBE_VERSION}" k8s.io/kubernetes/cmd/kube-proxy
  version_line elastiserve-pause "$(sha256sum "${MODULES}/pause/main.go" | cut -c1-12)" \
    elastiserve.local/k8s-assets/pause
  version_line kwok "${KWOK_VERSION}" sigs.k8s.io/kwok/cmd/kwok
  version_line helm "${HELM_VERSION}" helm.sh/helm/v3/cmd/helm
  version_line metrics-server "${METRICS_SERVER_VERSION}" \
    sigs.k8s.io/metrics-server/cmd/metrics-server
} >"${versions_tmp}"
if ! cmp -s "${versions_tmp}" "${DEST}/VERSIONS" 2>/dev/null; then
  mv -f "${versions_tmp}" "${DEST}/VERSIONS"
else
  rm -f "${versions_tmp}"
fi

if [[ ${built} -eq 0 ]]; then
  echo "build-k8s-assets: up to date in ${DEST}"
else
  echo "build-k8s-assets: ${built} binaries built into ${DEST}"
fi
