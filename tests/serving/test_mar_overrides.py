"""Serve-time settings over a ready ``.mar``: what the rewritten copy holds.

TorchServe 0.12 and the handler read workers, batching and handler settings from the archive's
``model-config.yaml``; ``elastiserve serve --mar`` must put the command line's values there
(the operator passes the CR's) without touching the user's archive.
"""

from __future__ import annotations

import io
import json
import stat
import tarfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from elastiserve.cli import parser_for
from elastiserve_serve.archive import ENTRY_SOURCE, ArchiveSpec, build_archive
from elastiserve_serve.archive_check import check_archive, check_model_dir
from elastiserve_serve.cli_serve import serve_overrides
from elastiserve_serve.mar_overrides import (
    MarError,
    ServeOverrides,
    override_config,
    rewrite_mar,
)
from elastiserve_serve.torchserve_handler import ElastiserveHandler

from .bundles import make_bundle

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


GENUINE = {
    "manifest.json": b'{"schema_version": 1}',
    "weights.safetensors": bytes(range(256)) * 64,
}


def make_mar(path: Path, config: dict[str, Any] | None = ARCHIVED, *,
             model: dict[str, Any] | None = None, top: dict[str, Any] | None = None,
             entry: str = ENTRY_SOURCE, extra: dict[str, bytes] | None = None,
             leave_out: tuple[str, ...] = ()) -> Path:
    """An archive laid out as ``elastiserve archive`` writes it, or changed as asked."""
    manifest_model: dict[str, Any] = {"modelName": "m", "handler": "elastiserve_entry.py",
                                      "modelVersion": "1.0", "configFile": "model-config.yaml",
                                      **(model or {})}
    manifest = {"runtime": "python", "model": manifest_model, "archiverVersion": "0.12.0",
                **(top or {})}
    members: dict[str, bytes] = {
        "MAR-INF/MANIFEST.json": json.dumps(manifest).encode(),
        "elastiserve_entry.py": entry.encode(),
        "model-config.yaml": yaml.safe_dump(config).encode(),
        **GENUINE, **(extra or {}),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as mar:
        for name, data in members.items():
            if name not in leave_out:
                mar.writestr(zipfile.ZipInfo(name) if name.endswith(".safetensors") else name,
                             data)
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
    for name in ("elastiserve_entry.py", "weights.safetensors", "manifest.json"):
        assert new[name] == old[name]
    stored = yaml.safe_load(new["model-config.yaml"])
    assert stored == config and stored["minWorkers"] == 2
    assert stored["handler"]["allow_pin"] is False and stored["handler"]["threads"] == 2
    manifest = json.loads(new["MAR-INF/MANIFEST.json"])
    assert manifest["model"]["configFile"] == "model-config.yaml"
    assert not list((tmp_path / "store").glob("*.partial"))


def test_a_real_archive_passes_its_check(tmp_path: Path) -> None:
    mar = build_archive(make_bundle(tmp_path / "bundle"), tmp_path / "s", "m", ArchiveSpec())
    rewrite_mar(mar, tmp_path / "store" / "m.mar", ServeOverrides(batch_size=2))
    with zipfile.ZipFile(tmp_path / "store" / "m.mar") as archive:
        check_archive(archive)  # and what serve wrote passes it again


def test_broken_archives_are_refused_with_the_reason(tmp_path: Path) -> None:
    tgz = tmp_path / "m.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("x"), io.BytesIO(b""))
    with pytest.raises(MarError, match="not a zip"):
        rewrite_mar(tgz, tmp_path / "out.mar", ServeOverrides())
    no_manifest = tmp_path / "n.mar"
    with zipfile.ZipFile(no_manifest, "w") as mar:
        mar.writestr("entry.py", "")
    with pytest.raises(MarError, match="not an archive elastiserve archive writes"):
        rewrite_mar(no_manifest, tmp_path / "out.mar", ServeOverrides())
    with pytest.raises(MarError, match="not a zip"):
        rewrite_mar(tmp_path / "missing.mar", tmp_path / "out.mar", ServeOverrides())
    with pytest.raises(MarError, match="not a zip"):
        rewrite_mar(tmp_path, tmp_path / "out.mar", ServeOverrides())


FOREIGN: dict[str, dict[str, Any]] = {
    "foreign-handler-code": {"entry": "import os; os.system('id')\n"},
    "handler-named-elsewhere": {"model": {"handler": "other.py"},
                                "extra": {"other.py": b"print(1)\n"}},
    "module-shadowing-torch": {"extra": {"torch.py": b"raise SystemExit\n"}},
    "pycache-smuggled": {"extra": {"__pycache__/PIL.cpython-311.pyc": b"\x00"}},
    "serialized-model": {"model": {"serializedFile": "model.pt"},
                         "extra": {"model.pt": b"\x80\x04."}},
    "requirements": {"model": {"requirementsFile": "requirements.txt"},
                     "extra": {"requirements.txt": b"evil\n"}},
    "manifest-extension": {"top": {"extensions": {"x": 1}}},
    "non-python-runtime": {"top": {"runtime": "LSP"}},
    "venv-in-config": {"config": {**ARCHIVED, "useVenv": True}},
    "torchrun-in-config": {"config": {**ARCHIVED, "parallelType": "pp",
                                      "torchrun": {"nproc-per-node": 4}}},
    "handler-section-not-a-mapping": {"config": {**ARCHIVED, "handler": ["x"]}},
    "missing-weights": {"leave_out": ("weights.safetensors",)},
    "path-traversal": {"extra": {"../../evil.py": b"x"}},
    "absolute-path": {"extra": {"/etc/cron.d/x": b"x"}},
}


@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_an_archive_elastiserve_did_not_write_is_refused_before_it_is_served(
    tmp_path: Path, case: str,
) -> None:
    source = make_mar(tmp_path / "m.mar", **FOREIGN[case])
    with pytest.raises(MarError):
        rewrite_mar(source, tmp_path / "store" / "m.mar", ServeOverrides())
    assert not (tmp_path / "store" / "m.mar").exists()


def test_a_member_listed_twice_or_a_link_is_refused(tmp_path: Path) -> None:
    twice = make_mar(tmp_path / "twice.mar")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        with zipfile.ZipFile(twice, "a") as mar:
            mar.writestr("elastiserve_entry.py", "import os\n")
    with pytest.raises(MarError, match="twice"):
        rewrite_mar(twice, tmp_path / "out.mar", ServeOverrides())
    linked = tmp_path / "linked.mar"
    with zipfile.ZipFile(make_mar(tmp_path / "src.mar")) as src, \
            zipfile.ZipFile(linked, "w") as out:
        for info in src.infolist():
            if info.filename == "manifest.json":
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            out.writestr(info, src.read(info.filename))
    with pytest.raises(MarError, match="symbolic link"):
        rewrite_mar(linked, tmp_path / "out.mar", ServeOverrides())


def test_declared_sizes_are_bounded(tmp_path: Path) -> None:
    huge_entry = make_mar(tmp_path / "big.mar", entry=ENTRY_SOURCE + "#" * 70_000)
    with pytest.raises(MarError):
        rewrite_mar(huge_entry, tmp_path / "out.mar", ServeOverrides())


class FakeContext:
    def __init__(self, model_dir: Path, manifest: Any) -> None:
        self.system_properties = {"model_dir": str(model_dir)}
        self.manifest = manifest
        self.model_yaml_config: dict[str, Any] = {"handler": {"control_file": ""}}
        self.metrics = None
        self.model_name = "m"


def _extract(mar: Path, into: Path) -> Path:
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(into)
    return into


def test_the_handler_checks_its_model_dir_before_loading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An archive that reached TorchServe without ``serve --mar`` is refused in initialize."""
    loaded: list[str] = []
    monkeypatch.setattr("elastiserve_serve.torchserve_handler.load_levels",
                        lambda *a, **k: loaded.append("levels"))
    genuine = _extract(make_mar(tmp_path / "ok.mar"), tmp_path / "ok")
    (genuine / "__pycache__").mkdir()
    (genuine / "__pycache__" / "elastiserve_entry.cpython-311.pyc").write_bytes(b"")
    manifest = json.loads((genuine / "MAR-INF" / "MANIFEST.json").read_text())
    check_model_dir(genuine, manifest)
    for case in ("module-shadowing-torch", "foreign-handler-code", "serialized-model"):
        folder = _extract(make_mar(tmp_path / f"{case}.mar", **FOREIGN[case]), tmp_path / case)
        context = FakeContext(folder, json.loads(
            (folder / "MAR-INF" / "MANIFEST.json").read_text()))
        with pytest.raises(MarError):
            ElastiserveHandler().initialize(context)
    linked = _extract(make_mar(tmp_path / "l.mar"), tmp_path / "linked")
    (linked / "weights.safetensors").unlink()
    (linked / "weights.safetensors").symlink_to("/etc/passwd")
    with pytest.raises(MarError, match="plain"):
        check_model_dir(linked, manifest)
    assert loaded == []


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
