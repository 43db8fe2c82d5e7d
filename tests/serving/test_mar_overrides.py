"""Serve-time settings over a ready ``.mar``: what the rewritten copy holds.

TorchServe 0.12 and the handler read workers, batching and handler settings from the archive's
``model-config.yaml``; ``elastiserve serve --mar`` must put the command line's values there
(the operator passes the CR's) without touching the user's archive.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from elastiserve.cli import parser_for
from elastiserve_serve.cli_serve import serve_overrides
from elastiserve_serve.mar_overrides import (
    MarError,
    ServeOverrides,
    override_config,
    rewrite_mar,
)

ARCHIVED = {
    "minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 5,
    "responseTimeout": 30,
    "handler": {"control_file": "/old/level.json", "allow_pin": True, "threads": 2},
}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (ServeOverrides(), ARCHIVED),
        (ServeOverrides(workers=3), {**ARCHIVED, "minWorkers": 3, "maxWorkers": 3}),
        (ServeOverrides(batch_size=4, max_batch_delay_ms=20),
         {**ARCHIVED, "batchSize": 4, "maxBatchDelay": 20}),
        # TorchServe 0.12 reads a 0 delay as unset (then 100 ms): the nearest it honours.
        (ServeOverrides(max_batch_delay_ms=0), {**ARCHIVED, "maxBatchDelay": 1}),
        (ServeOverrides(handler={"allow_pin": False, "control_file": "/new/level.json"}),
         {**ARCHIVED, "handler": {"control_file": "/new/level.json", "allow_pin": False,
                                  "threads": 2}}),
    ],
    ids=["nothing", "workers", "batching", "zero-delay", "handler-merged"],
)
def test_override_config(overrides: ServeOverrides, expected: dict[str, Any]) -> None:
    assert override_config(ARCHIVED, overrides) == expected


@pytest.mark.parametrize("bad", [{"workers": 0}, {"batch_size": 0}, {"max_batch_delay_ms": -1}])
def test_impossible_overrides_are_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ServeOverrides(**bad)  # type: ignore[arg-type]


def make_mar(path: Path, config: dict[str, Any] | None, config_name: str = "conf.yaml") -> Path:
    model: dict[str, Any] = {"modelName": "m", "handler": "entry.py", "modelVersion": "1.0"}
    if config is not None:
        model["configFile"] = config_name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as mar:
        mar.writestr("MAR-INF/MANIFEST.json", json.dumps({"runtime": "python", "model": model}))
        mar.writestr("entry.py", "print('entry')\n")
        mar.writestr(zipfile.ZipInfo("weights.safetensors"), bytes(range(256)) * 64)
        if config is not None:
            mar.writestr(config_name, yaml.safe_dump(config))
    return path


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as mar:
        return {name: mar.read(name) for name in mar.namelist()}


def test_rewrite_replaces_only_the_config_and_leaves_the_source(tmp_path: Path) -> None:
    source = make_mar(tmp_path / "m.mar", ARCHIVED)
    before = source.read_bytes()
    config = rewrite_mar(source, tmp_path / "store" / "m.mar",
                         ServeOverrides(workers=2, handler={"allow_pin": False}))
    assert source.read_bytes() == before
    old, new = members(source), members(tmp_path / "store" / "m.mar")
    assert set(old) == set(new)
    for name in ("entry.py", "weights.safetensors"):
        assert new[name] == old[name]
    stored = yaml.safe_load(new["conf.yaml"])
    assert stored == config and stored["minWorkers"] == 2
    assert stored["handler"]["allow_pin"] is False and stored["handler"]["threads"] == 2
    assert json.loads(new["MAR-INF/MANIFEST.json"])["model"]["configFile"] == "conf.yaml"
    assert not list((tmp_path / "store").glob("*.partial"))


def test_an_archive_without_a_config_gets_one_named_in_its_manifest(tmp_path: Path) -> None:
    source = make_mar(tmp_path / "bare.mar", None)
    rewrite_mar(source, tmp_path / "out.mar", ServeOverrides(batch_size=4))
    new = members(tmp_path / "out.mar")
    manifest = json.loads(new["MAR-INF/MANIFEST.json"])
    assert yaml.safe_load(new[manifest["model"]["configFile"]]) == {"batchSize": 4}


def test_broken_archives_are_refused_with_the_reason(tmp_path: Path) -> None:
    tgz = tmp_path / "m.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("x"), io.BytesIO(b""))
    with pytest.raises(MarError, match="not a zip"):
        rewrite_mar(tgz, tmp_path / "out.mar", ServeOverrides())
    no_manifest = tmp_path / "n.mar"
    with zipfile.ZipFile(no_manifest, "w") as mar:
        mar.writestr("entry.py", "")
    with pytest.raises(MarError, match="MANIFEST"):
        rewrite_mar(no_manifest, tmp_path / "out.mar", ServeOverrides())


def test_the_command_line_sets_what_it_names_and_the_control_file_always(
    tmp_path: Path,
) -> None:
    def parsed(*extra: str) -> ServeOverrides:
        argv = ["serve", "--mar", "m.mar", "--control-file", "/shm/level.json", *extra]
        return serve_overrides(parser_for(argv).parse_args(argv))

    plain = parsed()
    assert (plain.workers, plain.batch_size, plain.max_batch_delay_ms) == (None, None, None)
    assert plain.handler == {"control_file": "/shm/level.json"}
    full = parsed("--workers", "2", "--batch-size", "4", "--max-batch-delay-ms", "7",
                  "--no-allow-pin")
    assert (full.workers, full.batch_size, full.max_batch_delay_ms) == (2, 4, 7)
    assert full.handler == {"control_file": "/shm/level.json", "allow_pin": False}
    assert parsed("--allow-pin").handler["allow_pin"] is True
