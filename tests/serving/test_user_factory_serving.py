"""A bundle of a user's own ``nn.Module`` served by the real TorchServe, allowed by the env.

The manifest names ``package.module:factory``; the loader builds it only when the loading
process's ``ELASTISERVE_ALLOWED_FACTORIES`` lists it (the chart's ``serving.allowedFactories``,
put on the serving container by the operator). What this adds to the unit tests: the variable
set where ``elastiserve serve`` starts TorchServe crosses TorchServe's frontend to the Python
workers that load the bundle, and the factory's code is found on the workers' path, as it
would be in an image that installs it. Without the variable the same loader refuses the name
before importing anything (checked in-process here, and in tests/training).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from torch import nn

from elastiserve_serve.archive import ArchiveSpec, build_archive
from elastiserve_serve.ts_server import run_torchserve
from elastiserve_store import constructors, load_bundle
from elastiserve_store.bundle import write_bundle
from elastiserve_store.constructors import ConstructorNotAllowedError
from elastiserve_store.manifest import InputSpec, Normalisation
from elastiserve_train.model_analysis import analyse

from .conftest import MODEL, Served
from .tiny import png_bytes
from .torchvision_bundles import CLASSES, LEVELS, MEAN, RATIOS, SHAPE, STD, nested_levels

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]

MODULE = "es_e2e_user_models"
FACTORY = f"{MODULE}:tiny_net"
USER_CODE = textwrap.dedent('''
    """The user's model code, installed beside the serving runtime."""
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        def __init__(self, num_classes: int) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(8), nn.ReLU())
            self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False),
                                       nn.BatchNorm2d(8), nn.ReLU())
            self.fc = nn.Linear(8, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            x = x + self.block(x)
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


    def tiny_net(num_classes: int = 4) -> nn.Module:
        return TinyNet(num_classes)
''')


@pytest.fixture(scope="module")
def user_bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the bundle, the folder holding the user's module), built with the factory trusted
    in this process only (as ``elastiserve train --model`` trusts its user's)."""
    root = tmp_path_factory.mktemp("user-factory")
    code = root / "site"
    code.mkdir()
    (code / f"{MODULE}.py").write_text(USER_CODE)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(code))
        patch.setattr(constructors, "_trusted", {FACTORY})
        patch.delenv(constructors.ALLOW_ENV, raising=False)
        arch_args = analyse(FACTORY, {"num_classes": len(CLASSES)}, SHAPE, len(CLASSES))
        models: list[nn.Module] = nested_levels(arch_args, FACTORY)
        write_bundle(
            root / "bundle", architecture=FACTORY, arch_args=arch_args, models=models,
            names=list(LEVELS), channel_ratios=RATIOS, input_spec=InputSpec(*SHAPE),
            normalisation=Normalisation(MEAN, STD), class_names=list(CLASSES),
        )
    yield root / "bundle", code


def test_without_the_allow_list_the_loader_refuses_the_factory(
    user_bundle: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, code = user_bundle
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.setattr(constructors, "_trusted", set())
    monkeypatch.delenv(constructors.ALLOW_ENV, raising=False)
    assert json.loads((bundle / "manifest.json").read_text())["architecture"]["name"] == FACTORY
    with pytest.raises(ConstructorNotAllowedError, match=constructors.ALLOW_ENV):
        load_bundle(bundle)


def test_torchserve_workers_build_it_when_the_env_allows_it(
    user_bundle: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, code = user_bundle
    control = tmp_path / "shm" / "level.json"
    spec = ArchiveSpec(workers=1, batch_size=1, max_batch_delay_ms=5,
                       handler={"control_file": str(control), "allow_pin": True, "threads": 1})
    # `elastiserve archive` checks the bundle by loading it: it needs the allow-list too.
    with monkeypatch.context() as archiving:
        archiving.syspath_prepend(str(code))
        archiving.setenv(constructors.ALLOW_ENV, FACTORY)
        build_archive(bundle, tmp_path / "store", MODEL, spec)
    monkeypatch.delenv(constructors.ALLOW_ENV, raising=False)  # only extra_env carries it now
    # What the operator puts on the serving container (one entry here), and the image's
    # site-packages standing in for the folder that holds the user's code.
    env = {constructors.ALLOW_ENV: FACTORY, "PYTHONPATH": str(code)}
    with run_torchserve(tmp_path / "run", tmp_path / "store", [f"{MODEL}={MODEL}.mar"],
                        extra_env=env) as server:
        served = Served(server, control)
        for level in LEVELS:
            response = httpx.post(served.predict_url, content=png_bytes(16, 16, "RGB"),
                                  headers={**served.auth, "X-Elastiserve-Level": level},
                                  timeout=30)
            assert response.status_code == 200, response.text
            assert response.json()["level"] == level
