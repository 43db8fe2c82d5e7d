"""The chart's CRDs are the operator's, byte for byte.

One source of truth: ``operator/elastiserve_operator/crd/`` is what the operator's tests and
the API-server validation tests use; ``charts/elastiserve/crds/`` holds copies because helm
reads only files inside the chart (a symlink would break ``helm package``). To update, copy
the operator's file over the chart's: ``cp operator/elastiserve_operator/crd/*.yaml
charts/elastiserve/crds/``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from elastiserve.testing.helm import CHART_DIR, REPO_ROOT, crd_documents

OPERATOR_CRDS = REPO_ROOT / "operator" / "elastiserve_operator" / "crd"
CHART_CRDS = CHART_DIR / "crds"


def operator_crd_files() -> list[Path]:
    return sorted(OPERATOR_CRDS.glob("*.yaml"))


def test_operator_ships_crds() -> None:
    assert any(p.name == "elasticmodels.yaml" for p in operator_crd_files())


@pytest.mark.parametrize("source", operator_crd_files(), ids=lambda p: p.name)
def test_chart_copy_is_byte_identical(source: Path) -> None:
    copy = CHART_CRDS / source.name
    assert copy.is_file(), f"{copy} missing: cp {source} {copy}"
    assert copy.read_bytes() == source.read_bytes(), (
        f"{copy} differs from {source}; the operator's file is the source: cp {source} {copy}"
    )


def test_no_crd_is_defined_twice() -> None:
    names = Counter(doc["metadata"]["name"] for doc in crd_documents())
    assert {name for name, count in names.items() if count > 1} == set()


def test_chart_ships_kopf_peering_crds() -> None:
    names = {doc["metadata"]["name"] for doc in crd_documents()}
    assert {
        "elasticmodels.elastiserve.io",
        "kopfpeerings.kopf.dev",
        "clusterkopfpeerings.kopf.dev",
    } <= names


def test_crds_folder_holds_only_crds() -> None:
    kinds = {doc["kind"] for doc in crd_documents()}
    assert kinds == {"CustomResourceDefinition"}
