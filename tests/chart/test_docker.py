"""The Dockerfiles' must-haves, checked by reading them (no Docker engine runs here).

What is checked: every base image is pinned to a tag that is not ``latest``; the final stage
runs as a numeric non-root user; the operator image installs the ``operator`` extra and never
torch (nor the serve/train extras); the serving image has Java 17, installs the ``serve``
extra on amd64 and keeps the base's torch on Jetson; the build context is an allowlist.
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
    """ARGs before the first FROM, with their defaults (what FROM lines may use)."""
    found: dict[str, str] = {}
    for step in steps:
        if step.keyword == "FROM":
            break
        if step.keyword == "ARG":
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


def test_serving_has_java_17_in_both_flavours() -> None:
    java = [line for line in run_lines(SERVING) if "openjdk-17-jre-headless" in line]
    assert len(java) == 2


def test_serving_amd64_installs_serve_extra() -> None:
    assert any('".[serve]"' in line for line in run_lines(SERVING))


def test_serving_jetson_keeps_the_base_torch() -> None:
    jetson = [line for line in run_lines(SERVING) if "--no-deps" in line]
    assert len(jetson) == 1
    first_install = jetson[0].split("&&")[0]
    requirements = re.findall(r'"([^"]+)"', first_install)
    assert not any(TORCH.match(req) for req in requirements), requirements
    # Everything else the serve extra needs is installed explicitly, with the same pins.
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = {
        req
        for req in project["project"]["optional-dependencies"]["serve"]
        + project["project"]["dependencies"]
        if not TORCH.match(req)
    }
    assert wanted == set(requirements)


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
