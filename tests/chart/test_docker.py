"""The Dockerfiles' must-haves, checked by reading them (no Docker engine runs here).

What is checked: every base image is pinned to a tag that is not ``latest`` and comes from a
build argument (so a base built from Debian packages can stand in, see
``elastiserve.testing.images``); the final stage runs as a numeric non-root user; the operator
image installs the ``operator`` extra and never torch (nor the serve/train extras), and checks
that with the interpreter its entrypoint runs; the serving image installs Java 17 when its base
has none, installs the ``serve`` extra on amd64 into a venv that sees a base's own torch, and
keeps the base's torch on Jetson; the build context is an allowlist. The images themselves are
built and run in ``tests/images``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib

from elastiserve.testing.helm import REPO_ROOT

DOCKER = REPO_ROOT / "docker"
OPERATOR = DOCKER / "operator.Dockerfile"
SERVING = DOCKER / "serving.Dockerfile"
TORCH = re.compile(r"^torch\s*([<>=!~;\[]|$)")  # torch itself, not torchserve/torch-...
# What the Jetson recipe takes from its NVIDIA base instead of pip: torch (the CUDA build for
# the Orin iGPU) and torchvision, built against that torch (PyPI's would pin and pull PyPI's).
FROM_JETSON_BASE = re.compile(r"^(torch|torchvision)\s*([<>=!~;\[]|$)")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


def instructions(path: Path) -> list[Instruction]:
    """Dockerfile instructions with line continuations joined and comments dropped."""
    out: list[Instruction] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, value = full.partition(" ")
        out.append(Instruction(keyword.upper(), value.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return out


def global_args(steps: list[Instruction]) -> dict[str, str]:
    """ARGs before the first FROM that have defaults (what FROM lines may use).

    An ARG declared without a default (``TARGETARCH``, which the builder sets) is left out, so
    that ``${TARGETARCH}`` stays unexpanded instead of becoming an empty string.
    """
    found: dict[str, str] = {}
    for step in steps:
        if step.keyword == "FROM":
            break
        if step.keyword == "ARG" and "=" in step.value:
            name, _, default = step.value.partition("=")
            found[name] = default
    return found


def base_images(path: Path) -> list[str]:
    """Every FROM image with global ARG defaults substituted; stage names are left out."""
    steps = instructions(path)
    args = global_args(steps)
    stages: set[str] = set()
    images: list[str] = []
    for step in steps:
        if step.keyword != "FROM":
            continue
        words = [w for w in step.value.split() if not w.startswith("--platform")]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), words[0])
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2])
        prefix = image.split("${")[0]
        if image in stages or ("${" in image and any(s.startswith(prefix) for s in stages)):
            continue  # an earlier stage of this file, e.g. FROM serving-${TARGETARCH}
        images.append(image)
    return images


def final_stage(path: Path) -> list[Instruction]:
    steps = instructions(path)
    last = max(i for i, s in enumerate(steps) if s.keyword == "FROM")
    return steps[last:]


def run_lines(path: Path) -> list[str]:
    return [s.value for s in instructions(path) if s.keyword == "RUN"]


@pytest.mark.parametrize("path", [OPERATOR, SERVING], ids=lambda p: p.name)
class TestBothImages:
    def test_bases_are_pinned_and_never_latest(self, path: Path) -> None:
        images = base_images(path)
        assert images
        for image in images:
            assert "${" not in image, f"{image}: base from an ARG without a default"
            name = image.split("@")[0]
            assert "@sha256:" in image or ":" in name.rsplit("/", 1)[-1], f"{image}: no tag"
            assert not name.endswith(":latest"), f"{image}: ':latest' is not a version"

    def test_final_stage_runs_as_numeric_non_root_user(self, path: Path) -> None:
        users = [s.value for s in final_stage(path) if s.keyword == "USER"]
        assert users, "the final stage sets no USER (the image would run as root)"
        uid, _, gid = users[-1].partition(":")
        assert uid.isdigit() and int(uid) != 0, users[-1]
        assert not gid or (gid.isdigit() and int(gid) != 0), users[-1]

    def test_has_an_entrypoint(self, path: Path) -> None:
        assert any(s.keyword == "ENTRYPOINT" for s in final_stage(path))


def test_operator_installs_operator_extra_only_and_never_torch() -> None:
    runs = " ".join(run_lines(OPERATOR))
    assert '".[operator]"' in runs
    installs = [line for line in run_lines(OPERATOR) if "pip install" in line]
    for line in installs:
        command = line.split("&&")[0]
        assert "torch" not in command, command
        assert not re.search(r"\[(?:[^\]]*,)?(serve|train)\b", command), command
    # The build itself fails if torch ever sneaks in through a dependency.
    assert 'python -c "import torch"' in runs


def test_operator_torch_check_uses_the_entrypoints_interpreter() -> None:
    """The venv is isolated from the base, and the final image checks its own ``python``."""
    runs = run_lines(OPERATOR)
    assert any(re.search(r"python -m venv /opt/venv\b", line) for line in runs)
    assert not any("--system-site-packages" in line for line in runs)
    assert any('/opt/venv/bin/python -c "import torch"' in line for line in runs)
    final = final_stage(OPERATOR)
    path = next(i for i, s in enumerate(final) if s.keyword == "ENV" and "PATH=/opt/venv/bin:"
                in s.value)
    checks = [i for i, s in enumerate(final)
              if s.keyword == "RUN" and 'python -c "import torch"' in s.value]
    assert checks and checks[-1] > path, "the final stage must check the PATH's python"
    entrypoint = next(s.value for s in final if s.keyword == "ENTRYPOINT")
    assert entrypoint.startswith('["python"')


def test_serving_has_java_17_in_both_flavours_unless_the_base_has_java() -> None:
    java = [line for line in run_lines(SERVING) if "openjdk-17-jre-headless" in line]
    assert len(java) == 2
    for line in java:
        assert re.match(r"command -v java >/dev/null\s+\|\|", line), line


def test_serving_amd64_venv_sees_the_bases_torch_and_the_index_is_optional() -> None:
    runs = run_lines(SERVING)
    assert "python -m venv --system-site-packages /opt/venv" in runs
    install = next(line for line in runs if '".[serve]"' in line)
    assert install.startswith('pip install ${TORCH_INDEX_URL:+--extra-index-url '
                              '"$TORCH_INDEX_URL"} ".[serve]"'), install
    args = global_args(instructions(SERVING))
    assert args["TORCH_INDEX_URL"].startswith("https://download.pytorch.org/whl/")


def test_serving_declares_targetarch_for_buildah() -> None:
    """buildah substitutes ``FROM serving-${TARGETARCH}`` only for a declared ARG."""
    steps = instructions(SERVING)
    first_from = next(i for i, s in enumerate(steps) if s.keyword == "FROM")
    assert Instruction("ARG", "TARGETARCH") in steps[:first_from]


@pytest.mark.parametrize("path", [OPERATOR, SERVING], ids=lambda p: p.name)
def test_default_base_is_python_slim(path: Path) -> None:
    assert re.fullmatch(r"python:3\.12[\d.]*-slim(-\w+)?",
                        global_args(instructions(path))["PYTHON_IMAGE"])


def test_serving_amd64_installs_serve_extra() -> None:
    assert any('".[serve]"' in line for line in run_lines(SERVING))


def test_serving_jetson_keeps_the_base_torch() -> None:
    jetson = [line for line in run_lines(SERVING) if "--no-deps" in line]
    assert len(jetson) == 1
    first_install = jetson[0].split("&&")[0]
    requirements = re.findall(r'"([^"]+)"', first_install)
    assert not any(FROM_JETSON_BASE.match(req) for req in requirements), requirements
    # Everything else the serve extra needs is installed explicitly, with the same pins.
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = {
        req
        for req in project["project"]["optional-dependencies"]["serve"]
        + project["project"]["dependencies"]
        if not FROM_JETSON_BASE.match(req)
    }
    assert wanted == set(requirements)
    # ... and the base really brings both (the build imports them).
    checks = " ".join(line for line in run_lines(SERVING) if "python3 -c" in line)
    assert "import torch;" in checks and "import torchvision;" in checks


def test_the_serve_extra_has_torchvision_for_bundles_naming_a_torchvision_model() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    serve = project["project"]["optional-dependencies"]["serve"]
    assert any(re.match(r"^torchvision\s*>=", req) for req in serve), serve


def test_serving_amd64_checks_torchvision_sits_beside_torch() -> None:
    """A PyPI torchvision beside a base's torch would bring a second torch: the build fails
    unless both come from one directory (the Debian base's, or the venv's on python:slim)."""
    install = next(line for line in run_lines(SERVING) if '".[serve]"' in line)
    check = next(part for part in install.split("&&") if "import os, torch, torchvision" in part)
    assert "assert where[0] == where[1]" in check


def test_serving_arm64_base_is_an_nvidia_image_from_an_arg() -> None:
    args = global_args(instructions(SERVING))
    assert args["L4T_PYTORCH_IMAGE"].startswith("nvcr.io/nvidia/")
    assert any(s.value.startswith("serving-${TARGETARCH}") for s in instructions(SERVING)
               if s.keyword == "FROM")


def test_dockerignore_is_an_allowlist() -> None:
    lines = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start by ignoring everything, then allow what the images need"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "README.md", "elastiserve", "operator", "handlers"} <= allowed
    assert not allowed & {".venv", ".git", "tests", "runs"}
