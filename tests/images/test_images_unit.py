"""The pure parts of the image builder: content hash, build arguments, cache hits, the CLI.

No podman runs here: the cache-hit path must not need it (a warm run is hashing only), and a
missing builder must be one clear line, not a traceback or a hang.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elastiserve.testing import images
from elastiserve.testing.debian_base import OPERATOR_BASE, SERVING_BASE, BaseRecipe
from elastiserve.testing.images import (
    ContextRules,
    ImageBuildError,
    build_args,
    context_digest,
    context_files,
    image_key,
    read_dockerignore,
    render_build_args,
)

REPO = images.REPO_ROOT


def make_tree(root: Path) -> Path:
    """A checkout in miniature: the real Dockerfiles, .dockerignore and base script."""
    for relative in (".dockerignore", "docker/operator.Dockerfile", "docker/serving.Dockerfile",
                     "hack/debian-base.sh"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / relative, root / relative)
    files = {
        "pyproject.toml": "[project]\nname = 'x'\n",
        "README.md": "readme\n",
        "elastiserve/__init__.py": "VERSION = 1\n",
        "operator/elastiserve_operator/__init__.py": "",
        "model_store/elastiserve_store/__init__.py": "",
        "handlers/elastiserve_serve/__init__.py": "",
        "training/elastiserve_train/__init__.py": "",
        "tests/test_x.py": "",
        ".venv/lib/site.py": "",
    }
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


def rules(root: Path) -> ContextRules:
    return read_dockerignore(root / ".dockerignore")


class TestContextHash:
    def test_a_changed_source_file_changes_the_hash(self, tmp_path: Path) -> None:
        root = make_tree(tmp_path)
        before = context_digest(root, rules(root))
        (root / "elastiserve/__init__.py").write_text("VERSION = 2\n")
        assert context_digest(root, rules(root)) != before

    def test_a_new_file_in_an_allowed_folder_changes_the_hash(self, tmp_path: Path) -> None:
        root = make_tree(tmp_path)
        before = context_digest(root, rules(root))
        (root / "handlers/elastiserve_serve/extra.py").write_text("")
        assert context_digest(root, rules(root)) != before

    def test_pycache_and_files_outside_the_allow_list_do_not(self, tmp_path: Path) -> None:
        root = make_tree(tmp_path)
        before = context_digest(root, rules(root))
        cache = root / "elastiserve/__pycache__"
        cache.mkdir()
        (cache / "__init__.cpython-311.pyc").write_bytes(b"\0" * 16)
        (root / "operator/elastiserve_operator/stray.pyc").write_bytes(b"\1")
        (root / "model_store/elastiserve_store/model.mar").write_bytes(b"zip")
        (root / "tests/test_x.py").write_text("changed\n")
        (root / ".venv/lib/site.py").write_text("changed\n")
        (root / "notes.txt").write_text("not in the context\n")
        assert context_digest(root, rules(root)) == before

    def test_the_executable_bit_counts(self, tmp_path: Path) -> None:
        root = make_tree(tmp_path)
        before = context_digest(root, rules(root))
        os.chmod(root / "README.md", 0o755)
        assert context_digest(root, rules(root)) != before

    def test_files_listed_are_the_allow_list(self, tmp_path: Path) -> None:
        root = make_tree(tmp_path)
        (root / "elastiserve/__pycache__").mkdir()
        (root / "elastiserve/__pycache__/a.pyc").write_bytes(b"")
        assert context_files(root, rules(root)) == [
            "README.md",
            "elastiserve/__init__.py",
            "handlers/elastiserve_serve/__init__.py",
            "model_store/elastiserve_store/__init__.py",
            "operator/elastiserve_operator/__init__.py",
            "pyproject.toml",
            "training/elastiserve_train/__init__.py",
        ]

    def test_the_repository_dockerignore_parses_as_its_allow_list(self) -> None:
        parsed = read_dockerignore(REPO / ".dockerignore")
        assert set(parsed.allowed) == {"pyproject.toml", "README.md", "elastiserve", "operator",
                                       "model_store", "handlers", "training"}
        assert parsed.is_excluded("elastiserve/__pycache__/cli.cpython-311.pyc")
        assert not parsed.is_excluded("elastiserve/cli.py")

    def test_a_dockerignore_that_is_not_an_allow_list_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / ".dockerignore").write_text(".venv\n")
        with pytest.raises(ImageBuildError, match="allow-list"):
            read_dockerignore(tmp_path / ".dockerignore")


class TestBuildArgs:
    def test_rendered_sorted_with_empty_values_kept(self) -> None:
        rendered = render_build_args({"TORCH_INDEX_URL": "", "PYTHON_IMAGE": "localhost/b:1"})
        assert rendered == ["--build-arg", "PYTHON_IMAGE=localhost/b:1",
                            "--build-arg", "TORCH_INDEX_URL="]

    @pytest.mark.parametrize("args", [{"NOT-A-NAME": "x"}, {"A": "two\nlines"}, {"A": "n\0ul"}])
    def test_bad_names_and_values_are_refused(self, args: dict[str, str]) -> None:
        with pytest.raises(ValueError):
            render_build_args(args)

    def test_serving_gets_the_local_base_no_torch_index_and_the_arch(self) -> None:
        args = build_args(images.SPECS["serving"], "localhost/elastiserve/base-serving:1",
                          "amd64")
        assert args == {"PYTHON_IMAGE": "localhost/elastiserve/base-serving:1",
                        "TARGETARCH": "amd64", "TORCH_INDEX_URL": ""}

    def test_operator_gets_no_torch_index(self) -> None:
        args = build_args(images.SPECS["operator"], "b:1", "amd64")
        assert "TORCH_INDEX_URL" not in args

    def test_only_x86_64_builds_locally(self) -> None:
        assert images.target_arch("x86_64") == "amd64"
        with pytest.raises(ImageBuildError, match="x86_64"):
            images.target_arch("aarch64")


class TestImageKey:
    def key(self, root: Path, **changes: str) -> str:
        spec = images.SPECS["serving"]
        args = {"PYTHON_IMAGE": "b:1", "TARGETARCH": "amd64", "TORCH_INDEX_URL": ""}
        args.update(changes)
        return image_key(spec, root=root, base_key="base", args=args)

    def test_build_args_dockerfile_and_base_all_count(self, tmp_path: Path) -> None:
        root = make_tree(tmp_path)
        before = self.key(root)
        assert self.key(root) == before
        assert self.key(root, TORCH_INDEX_URL="https://example.invalid/cpu") != before
        spec = images.SPECS["serving"]
        other_base = image_key(spec, root=root, base_key="other", args={"PYTHON_IMAGE": "b:1",
                               "TARGETARCH": "amd64", "TORCH_INDEX_URL": ""})
        assert other_base != before
        dockerfile = root / "docker/serving.Dockerfile"
        dockerfile.write_text(dockerfile.read_text() + "# a comment\n")
        assert self.key(root) != before

    def test_the_operator_key_ignores_the_serving_dockerfile(self, tmp_path: Path) -> None:
        root = make_tree(tmp_path)
        before = images.plan("operator", root=root, arch="amd64")
        (root / "docker/serving.Dockerfile").write_text("FROM scratch\n")
        after = images.plan("operator", root=root, arch="amd64")
        assert after.key == before.key
        assert after.ref == f"localhost/elastiserve/operator:{after.key[:12]}"

    def test_the_base_script_reaches_the_image_key(self, tmp_path: Path) -> None:
        root = make_tree(tmp_path)
        before = images.plan("serving", root=root, arch="amd64")
        (root / "hack/debian-base.sh").write_text("#!/bin/sh\n# another recipe\n")
        after = images.plan("serving", root=root, arch="amd64")
        assert after.base_key != before.base_key and after.key != before.key
        assert after.args["PYTHON_IMAGE"] == after.base_ref


def test_a_snapshot_has_the_same_key_and_only_the_context(tmp_path: Path) -> None:
    """Images build from a copy, so that edits during a build cannot make the key lie."""
    root = make_tree(tmp_path / "repo")
    (root / "elastiserve/__pycache__").mkdir()
    (root / "elastiserve/__pycache__/a.pyc").write_bytes(b"")
    os.chmod(root / "hack/debian-base.sh", 0o755)
    snapshot = images.snapshot_context(root, images.SPECS["serving"], tmp_path / "snap")
    assert images.plan("serving", root=snapshot).key == images.plan("serving", root=root).key
    copied = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*")
                    if p.is_file())
    assert copied == sorted([".dockerignore", "docker/serving.Dockerfile",
                             "hack/debian-base.sh", *context_files(root, rules(root))])


class TestBaseRecipes:
    def test_key_covers_suite_and_packages_but_not_their_order(self, tmp_path: Path) -> None:
        script = tmp_path / "base.sh"
        script.write_text("echo\n")
        recipe = BaseRecipe("x", "trixie", ("a", "b"))
        before = recipe.key(script)
        assert before == BaseRecipe("x", "trixie", ("b", "a")).key(script)
        assert before != BaseRecipe("x", "bookworm", ("a", "b")).key(script)
        assert before != BaseRecipe("x", "trixie", ("a", "b", "c")).key(script)
        script.write_text("echo changed\n")
        assert recipe.key(script) != before

    def test_the_serving_base_has_torch_and_java_the_operator_base_neither(self) -> None:
        assert {"python3-torch", "python3-torchvision",
                "openjdk-21-jre-headless"} <= set(SERVING_BASE.packages)
        assert not any("torch" in p or "jdk" in p for p in OPERATOR_BASE.packages)
        assert SERVING_BASE.suite == OPERATOR_BASE.suite == "trixie"

    def test_ref_names_the_base_and_the_key(self) -> None:
        ref = SERVING_BASE.ref()
        assert ref == f"localhost/elastiserve/base-serving:{SERVING_BASE.key()[:12]}"

    def test_import_sets_path(self) -> None:
        changes = OPERATOR_BASE.import_changes()
        assert any(c.startswith("ENV PATH=/usr/local/sbin") for c in changes)


def fake_cached(cache: Path, p: images.Plan, size: int = 1000) -> None:
    archive = p.archive(cache)
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(b"\0" * size)
    p.meta(cache).write_text(json.dumps({"key": p.key, "build_s": 321.0, "unpacked_mb": 9.5}))


class TestCache:
    def test_a_warm_call_is_hashing_only_and_needs_no_podman(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        root = make_tree(tmp_path / "repo")
        cache = tmp_path / "cache"
        for name in images.NAMES:
            fake_cached(cache, images.plan(name, root=root), size=2_500_000)
        monkeypatch.setattr(shutil, "which", lambda _name: None)
        started = time.monotonic()
        built = images.ensure_images(cache_dir=cache, root=root, progress=print)
        assert time.monotonic() - started < 2.0
        assert list(built) == ["operator", "serving"]
        for name, image in built.items():
            assert image.cached and image.name == name
            assert image.size_mb == 2.5 and image.cold_build_s == 321.0
            assert image.archive == images.plan(name, root=root).archive(cache)

    def test_a_stale_meta_is_not_a_hit(self, tmp_path: Path) -> None:
        root = make_tree(tmp_path / "repo")
        cache = tmp_path / "cache"
        p = images.plan("operator", root=root)
        fake_cached(cache, p)
        p.meta(cache).write_text(json.dumps({"key": "something else"}))
        assert images.cached_image(p, cache, time.monotonic()) is None
        p.meta(cache).write_text(json.dumps({"key": p.key}))
        p.archive(cache).unlink()  # metadata without its archive: not a hit either
        assert images.cached_image(p, cache, time.monotonic()) is None

    def test_a_missing_builder_is_one_line_naming_it(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        root = make_tree(tmp_path / "repo")
        monkeypatch.setattr(shutil, "which", lambda _name: None)
        with pytest.raises(ImageBuildError) as caught:
            images.ensure_images(["serving"], cache_dir=tmp_path / "cache", root=root,
                                 progress=print)
        message = str(caught.value)
        assert "podman" in message and "\n" not in message

    def test_an_unknown_image_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ImageBuildError, match="unknown image 'pause'"):
            images.ensure_images(["pause"], cache_dir=tmp_path)

    def test_the_cache_dir_comes_from_the_env(self) -> None:
        assert images.default_cache_dir({images.CACHE_ENV: "/x/y"}) == Path("/x/y")
        assert images.default_cache_dir({}) == Path.home() / ".cache/elastiserve/images"


class TestLocking:
    def test_a_held_lock_times_out_with_one_line(self, tmp_path: Path) -> None:
        lines: list[str] = []
        with (tmp_path / ".lock").open("a+") as holder:
            fcntl.flock(holder, fcntl.LOCK_EX)
            with pytest.raises(ImageBuildError, match="another image build"), \
                    images._locked(tmp_path, lines.append, timeout_s=0.3):
                pass
        assert lines and "waiting" in lines[0]
        with images._locked(tmp_path, lines.append, timeout_s=0.3):
            pass  # free again

    def test_a_timed_out_command_is_stopped_with_its_children(self, tmp_path: Path) -> None:
        marker = tmp_path / "child.pid"
        with pytest.raises(ImageBuildError, match="did not finish in 1 s"):
            images.run_logged(
                ["bash", "-c", f"sleep 60 & echo $! > {marker}; wait"],
                what="sleeper", timeout_s=1.0, log=tmp_path / "log",
            )
        child = int(marker.read_text())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and Path(f"/proc/{child}").exists():
            time.sleep(0.05)
        assert not Path(f"/proc/{child}").exists() or "Z" in Path(
            f"/proc/{child}/stat").read_text().split()[2]

    def test_a_failing_command_quotes_its_last_line(self, tmp_path: Path) -> None:
        with pytest.raises(ImageBuildError) as caught:
            images.run_logged(["bash", "-c", "echo first; echo 'E: no such package'; exit 3"],
                              what="mmdebstrap", timeout_s=10, log=tmp_path / "log")
        message = str(caught.value)
        assert "exit status 3" in message and "E: no such package" in message
        assert "\n" not in message


class TestCommandLine:
    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "elastiserve.testing.images", *args],
            capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
        )

    @pytest.mark.parametrize("argv", [(), ("build", "--only", "pause"), ("bogus",),
                                      ("build", "--frobnicate")])
    def test_bad_arguments_exit_2_with_one_line(self, argv: tuple[str, ...]) -> None:
        done = self.run(*argv)
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert done.stdout == ""

    def test_a_warm_build_prints_the_table(self, tmp_path: Path) -> None:
        cache = tmp_path / "cache"
        fake_cached(cache, images.plan("operator"), size=3_000_000)
        done = self.run("build", "--only", "operator", "--cache-dir", str(cache))
        assert done.returncode == 0, done.stderr
        header, row = done.stdout.strip().splitlines()
        assert header.split()[:4] == ["name", "ref", "build", "s"]
        assert row.split()[0] == "operator"
        assert images.plan("operator").ref in row and "3.0" in row and "yes" in row
