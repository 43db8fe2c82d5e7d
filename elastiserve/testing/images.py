"""The product's two images, built here from its Dockerfiles with no container registry.

``ensure_images()`` returns, for ``operator`` and ``serving``, an image reference and a
docker-archive tarball that ``ctr -n k8s.io images import`` (containerd 1.6) and ``podman
load`` accept. The bases come from Debian packages (:mod:`.debian_base`), the rest of each image
from PyPI inside the build, exactly as ``docker/*.Dockerfile`` say; only the build arguments
differ from a registry build (``PYTHON_IMAGE`` = the local base, no torch index).

Images are cached by content: the key hashes the Dockerfile, every file of the build context
(the ``.dockerignore`` allow-list, minus what it excludes, e.g. ``__pycache__``), the base's
recipe and the build arguments. A warm call hashes the context and finds the archive (well under
a second, no podman needed); a changed file rebuilds. The cache lives outside the checkout
(``ELASTISERVE_IMAGE_CACHE``, default ``~/.cache/elastiserve/images``) and holds podman's own
storage too (``--root``/``--runroot`` there, so the system's is never touched):

    archives/<name>-<hash12>.tar   the deliverable, written to a temporary name then renamed
    archives/<name>-<hash12>.json  ref, key, sizes, how long the cold build took
    storage/ runroot/ tmp/ logs/   podman's storage, scratch, one log per build step
    .lock                          flock: one build at a time, across processes

Every subprocess has a timeout and runs in its own process group, which is killed on timeout
or interrupt. Builds that need the network (mmdebstrap, ``podman build``) run in the host's
network namespace when the pytest session has moved into the test bed's
(:func:`elastiserve.testing.netns.outside_argv`).

    python -m elastiserve.testing.images build [--only serving] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from elastiserve.testing import netns
from elastiserve.testing.debian_base import OPERATOR_BASE, SERVING_BASE, BaseRecipe

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_ENV = "ELASTISERVE_IMAGE_CACHE"
NAMES = ("operator", "serving")
REPOSITORY = "localhost/elastiserve/"
# Bump when the build procedure changes in a way the hashed inputs do not show.
CACHE_FORMAT = "elastiserve-images/1"
# Archives kept per image name: the current one and the most recently used other one (two
# checkouts that alternate do not rebuild each other's images).
KEEP_ARCHIVES = 2
# The host's CA bundle, bind-mounted over the image's during the build (not committed): pip
# inside the build then trusts whatever the host trusts, e.g. a TLS-inspecting egress proxy.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# podman's default rlimits are refused on these machines; RUN steps and containers get these.
ULIMITS = ("nofile=1024:1024", "nproc=1024:1024")

MMDEBSTRAP_TIMEOUT_S = 1800.0
BUILD_TIMEOUT_S = 3600.0
SAVE_TIMEOUT_S = 900.0
IMPORT_TIMEOUT_S = 900.0
QUICK_TIMEOUT_S = 120.0
LOCK_TIMEOUT_S = 2 * 3600.0

Progress = Callable[[str], None]


class ImageBuildError(RuntimeError):
    """An image could not be built; the message is one line that names what is missing."""


@dataclass(frozen=True)
class BuiltImage:
    """One image, ready to import: ``ctr -n k8s.io images import <archive>`` gives ``ref``."""

    name: str  # "operator" | "serving"
    ref: str  # e.g. "localhost/elastiserve/serving:3f2a9c1d0b7e"
    archive: Path  # docker-archive tar
    build_s: float  # seconds this call spent on it (hashing only, when cached)
    size_mb: float  # archive size, 10**6 bytes
    cached: bool
    unpacked_mb: float  # the image's size in podman's storage (uncompressed layers)
    cold_build_s: float  # how long the build that made the archive took


@dataclass(frozen=True)
class ImageSpec:
    """How one image is built: its Dockerfile, its Debian base and its fixed build arguments."""

    name: str
    dockerfile: str  # relative to the repository root
    base: BaseRecipe
    args: tuple[tuple[str, str], ...] = ()

    @property
    def repository(self) -> str:
        return f"{REPOSITORY}{self.name}"


SPECS: dict[str, ImageSpec] = {
    "operator": ImageSpec("operator", "docker/operator.Dockerfile", OPERATOR_BASE),
    # Debian's python3-torch is in the base: no torch index (pip reads PyPI only).
    "serving": ImageSpec(
        "serving", "docker/serving.Dockerfile", SERVING_BASE, (("TORCH_INDEX_URL", ""),)
    ),
}


# ----------------------------------------------------------------------------- pure parts


def target_arch(machine: str | None = None) -> str:
    """The Dockerfiles' ``TARGETARCH`` for this machine; local Debian bases are amd64 only.

    On arm64 the serving Dockerfile's recipe is the Jetson one (torch from an L4T base), which
    no Debian base stands in for.
    """
    machine = platform.machine() if machine is None else machine
    if machine in ("x86_64", "amd64"):
        return "amd64"
    raise ImageBuildError(
        f"local image builds need an x86_64 machine (this is {machine!r}); on Jetson build "
        "docker/serving.Dockerfile with an L4T PyTorch base instead"
    )


def build_args(spec: ImageSpec, base_ref: str, arch: str) -> dict[str, str]:
    """The ``--build-arg`` values for ``spec`` on top of the local base ``base_ref``.

    ``TARGETARCH`` is passed explicitly: buildah 1.28 (Debian 12) substitutes it in ``FROM``
    only when given, unlike BuildKit, which derives it from ``--platform``.
    """
    return {"PYTHON_IMAGE": base_ref, "TARGETARCH": arch, **dict(spec.args)}


def render_build_args(args: Mapping[str, str]) -> list[str]:
    """``--build-arg NAME=VALUE`` pairs, sorted by name (the cache key hashes this list)."""
    rendered: list[str] = []
    for name in sorted(args):
        value = args[name]
        if not name.isidentifier():
            raise ValueError(f"build argument name {name!r} is not an identifier")
        if "\n" in value or "\0" in value:
            raise ValueError(f"build argument {name} holds a newline or NUL")
        rendered += ["--build-arg", f"{name}={value}"]
    return rendered


@dataclass(frozen=True)
class ContextRules:
    """The build context as ``.dockerignore`` describes it: allowed roots, excluded patterns."""

    allowed: tuple[str, ...]
    excluded: tuple[str, ...]

    def is_excluded(self, relative: str) -> bool:
        """True for a path (``/``-separated, relative to the root) the builder leaves out."""
        parts = relative.split("/")
        for pattern in self.excluded:
            if pattern.startswith("**/"):
                tail = pattern[3:]
                if any(fnmatch.fnmatchcase(part, tail) for part in parts):
                    return True
            elif fnmatch.fnmatchcase(relative, pattern.rstrip("/")):
                return True
        return False


def read_dockerignore(path: Path) -> ContextRules:
    """Parse an allow-list ``.dockerignore`` (``*``, then ``!entry`` lines, then exclusions).

    Only that shape is understood (it is the one ``tests/chart/test_docker.py`` enforces); any
    other first pattern is refused rather than hashed wrongly.
    """
    lines = [
        line.strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    if not lines or lines[0] != "*":
        raise ImageBuildError(f"{path} must start with '*' (an allow-list) to be hashed")
    allowed = tuple(line[1:].strip("/") for line in lines[1:] if line.startswith("!"))
    excluded = tuple(line for line in lines[1:] if not line.startswith("!"))
    return ContextRules(allowed, excluded)


def context_files(root: Path, rules: ContextRules) -> list[str]:
    """Every file of the build context, as sorted ``/``-separated paths relative to ``root``."""
    found: list[str] = []
    for entry in rules.allowed:
        top = root / entry
        if top.is_file() and not rules.is_excluded(entry):
            found.append(entry)
            continue
        for directory, subdirs, files in os.walk(top):
            base = Path(directory).relative_to(root).as_posix()
            subdirs[:] = [d for d in subdirs if not rules.is_excluded(f"{base}/{d}")]
            found += [f"{base}/{f}" for f in files if not rules.is_excluded(f"{base}/{f}")]
    return sorted(set(found))


def context_digest(root: Path, rules: ContextRules) -> str:
    """SHA-256 over the context's file names, executable bits and contents."""
    digest = hashlib.sha256()
    for relative in context_files(root, rules):
        path = root / relative
        mode = "x" if os.access(path, os.X_OK) else "-"
        digest.update(f"{relative}\0{mode}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def snapshot_context(root: Path, spec: ImageSpec, dest: Path) -> Path:
    """Copy what one build reads (context, Dockerfile, base script) from ``root`` to ``dest``.

    Others edit the checkout while an image builds; building from a copy that is hashed again
    makes the key describe exactly the files the image was built from.
    """
    if dest.exists():
        shutil.rmtree(dest)
    wanted = [".dockerignore", spec.dockerfile, "hack/debian-base.sh",
              *context_files(root, read_dockerignore(root / ".dockerignore"))]
    for relative in dict.fromkeys(wanted):
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, target)
    return dest


def image_key(
    spec: ImageSpec,
    *,
    root: Path,
    base_key: str,
    args: Mapping[str, str],
) -> str:
    """The content hash of one image: Dockerfile, context, base recipe, build arguments."""
    dockerignore = root / ".dockerignore"
    digest = hashlib.sha256()
    for part in (
        CACHE_FORMAT,
        spec.name,
        (root / spec.dockerfile).read_text(encoding="utf-8"),
        dockerignore.read_text(encoding="utf-8"),
        context_digest(root, read_dockerignore(dockerignore)),
        base_key,
        *render_build_args(args),
    ):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class Plan:
    """Everything about one image that is known before building it."""

    spec: ImageSpec
    key: str
    base_key: str
    base_ref: str
    args: dict[str, str]

    @property
    def short(self) -> str:
        return self.key[:12]

    @property
    def ref(self) -> str:
        return f"{self.spec.repository}:{self.short}"

    def archive(self, cache_dir: Path) -> Path:
        return cache_dir / "archives" / f"{self.spec.name}-{self.short}.tar"

    def meta(self, cache_dir: Path) -> Path:
        return self.archive(cache_dir).with_suffix(".json")


def plan(name: str, *, root: Path = REPO_ROOT, arch: str | None = None) -> Plan:
    """The key, reference and build arguments of image ``name`` for the tree at ``root``."""
    if name not in SPECS:
        raise ImageBuildError(f"unknown image {name!r} (known: {', '.join(NAMES)})")
    spec = SPECS[name]
    script = root / "hack" / "debian-base.sh"
    base_key = spec.base.key(script)
    base_ref = spec.base.ref(script)
    args = build_args(spec, base_ref, arch or target_arch())
    key = image_key(spec, root=root, base_key=base_key, args=args)
    return Plan(spec, key, base_key, base_ref, args)


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    value = env.get(CACHE_ENV, "")
    if value:
        return Path(value).expanduser()
    return Path.home() / ".cache" / "elastiserve" / "images"


# ----------------------------------------------------------------------------- processes


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group (mmdebstrap unmounts on it), SIGKILL after 30 s."""
    for sig, wait_s in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def run_logged(
    argv: Sequence[str],
    *,
    what: str,
    timeout_s: float,
    log: Path,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run ``argv`` with output appended to ``log``; raise one line on failure or timeout."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        try:
            process = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=None if env is None else dict(env), start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise ImageBuildError(f"{what}: {argv[0]} is not installed ({exc})") from exc
        try:
            returncode = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise ImageBuildError(
                f"{what} did not finish in {timeout_s:.0f} s (stopped; log {log})"
            ) from None
        except BaseException:
            _kill_group(process)
            raise
    if returncode != 0:
        raise ImageBuildError(
            f"{what} failed with exit status {returncode}: {_tail(log)} (log {log})"
        )


@dataclass(frozen=True)
class Podman:
    """podman with its storage, run state and scratch under the cache directory.

    runc, not crun ("cgroups in hybrid mode not supported" here); cgroupfs, as no systemd
    runs; events to a file; an empty unqualified-search list so no short name reaches a
    registry. The tests run containers through :meth:`argv` too.
    """

    cache_dir: Path
    executable: str = "podman"

    @classmethod
    def locate(cls, cache_dir: Path) -> Podman:
        missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
        if missing:
            raise ImageBuildError(
                f"{' and '.join(missing)} not installed: apt-get install podman runc "
                "(make system-deps installs them)"
            )
        return cls(cache_dir, shutil.which("podman") or "podman")

    def argv(self, *args: str) -> list[str]:
        return [
            self.executable,
            "--root", str(self.cache_dir / "storage"),
            "--runroot", str(self.cache_dir / "runroot"),
            "--storage-driver", "overlay",
            "--runtime", shutil.which("runc") or "runc",
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
            *args,
        ]

    def env(self) -> dict[str, str]:
        registries = self.cache_dir / "registries.conf"
        text = "unqualified-search-registries = []\n"
        if not registries.is_file() or registries.read_text(encoding="utf-8") != text:
            registries.parent.mkdir(parents=True, exist_ok=True)
            registries.write_text(text, encoding="utf-8")
        tmp = self.cache_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(registries), "TMPDIR": str(tmp)}

    def output(self, *args: str, timeout_s: float = QUICK_TIMEOUT_S) -> str:
        """stdout of a quick podman command; one-line error on failure."""
        try:
            done = subprocess.run(
                self.argv(*args), capture_output=True, text=True, timeout=timeout_s,
                env=self.env(), check=False, stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise ImageBuildError(f"podman {args[0]} did not answer in {timeout_s:.0f} s") from None
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1:] or ["no output"]
            raise ImageBuildError(f"podman {' '.join(args[:2])} failed: {last[0]}")
        return done.stdout

    def exists(self, ref: str) -> bool:
        done = subprocess.run(
            self.argv("image", "exists", ref), capture_output=True, timeout=QUICK_TIMEOUT_S,
            env=self.env(), check=False, stdin=subprocess.DEVNULL,
        )
        return done.returncode == 0

    def refs(self, repository: str) -> list[str]:
        out = self.output("images", "--format", "{{.Repository}}:{{.Tag}}",
                          "--filter", f"reference={repository}")
        return [line.strip() for line in out.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- the cache


@contextlib.contextmanager
def _locked(
    cache_dir: Path, progress: Progress, timeout_s: float = LOCK_TIMEOUT_S
) -> Iterator[None]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".lock").open("a+") as handle:
        deadline = time.monotonic() + timeout_s
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ImageBuildError(
                        f"another image build held {cache_dir / '.lock'} for "
                        f"{timeout_s:.0f} s"
                    ) from None
                if not told:
                    progress(f"waiting for another image build ({cache_dir / '.lock'})")
                    told = True
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_meta(path: Path, key: str) -> dict[str, Any] | None:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("key") != key:
        return None
    return meta


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _mb(size: float) -> float:
    return round(size / 1e6, 1)


def cached_image(p: Plan, cache_dir: Path, started: float) -> BuiltImage | None:
    """The image from the cache when its archive and metadata match ``p``'s key."""
    archive, meta_path = p.archive(cache_dir), p.meta(cache_dir)
    meta = _read_meta(meta_path, p.key)
    if meta is None or not archive.is_file():
        return None
    with contextlib.suppress(OSError):
        os.utime(meta_path)  # "recently used", for the archive pruning
    return BuiltImage(
        name=p.spec.name, ref=p.ref, archive=archive,
        build_s=round(time.monotonic() - started, 3),
        size_mb=_mb(archive.stat().st_size), cached=True,
        unpacked_mb=float(meta.get("unpacked_mb", 0.0)),
        cold_build_s=float(meta.get("build_s", 0.0)),
    )


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    found: list[str] = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            fields = line.split()
            if len(fields) > 4 and fields[4].startswith(prefix):
                found.append(fields[4])
    return found


class _Builder:
    """The slow path, under the lock: bases, builds, archives and the clean-up after them."""

    def __init__(self, cache_dir: Path, progress: Progress) -> None:
        self.cache_dir = cache_dir
        self.progress = progress
        self.podman = Podman.locate(cache_dir)
        self.logs = cache_dir / "logs"

    def sweep(self) -> None:
        """Leftovers of an interrupted build: working containers, dangling layers, scratch."""
        out = self.podman.output("ps", "--all", "--external", "--quiet", "--no-trunc")
        for container in out.split():
            with contextlib.suppress(ImageBuildError):
                self.podman.output("rm", "--force", container)
        self.podman.output("image", "prune", "--force")
        tmp = self.cache_dir / "tmp"
        if tmp.is_dir() and not _mounts_under(tmp):
            for entry in tmp.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        for partial in (self.cache_dir / "archives").glob(".*.tmp"):
            partial.unlink(missing_ok=True)

    def ensure_base(self, recipe: BaseRecipe, ref: str, script: Path) -> None:
        if self.podman.exists(ref):
            return
        if shutil.which("mmdebstrap") is None:
            raise ImageBuildError(
                "mmdebstrap is not installed: apt-get install mmdebstrap (make system-deps "
                "installs it); it builds the Debian base images"
            )
        started = time.monotonic()
        short = ref.rsplit(":", 1)[1]
        log = self.logs / f"base-{recipe.name}-{short}.log"
        log.unlink(missing_ok=True)
        tmp = self.cache_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        rootfs = tmp / f"base-{recipe.name}-{short}.tar"
        self.progress(f"base {recipe.name}: mmdebstrap {recipe.suite} with "
                      f"{len(recipe.packages)} packages (log {log})")
        try:
            run_logged(
                netns.outside_argv(["nice", "-n", "10",
                                    *recipe.command(rootfs, script)]),
                what=f"mmdebstrap of the {recipe.name} base", timeout_s=MMDEBSTRAP_TIMEOUT_S,
                log=log, env={**os.environ, "TMPDIR": str(tmp)},
            )
            run_logged(
                self.podman.argv("import", *recipe.import_changes(), str(rootfs), ref),
                what=f"podman import of the {recipe.name} base", timeout_s=IMPORT_TIMEOUT_S,
                log=log, env=self.podman.env(),
            )
        finally:
            rootfs.unlink(missing_ok=True)
        self.progress(f"base {recipe.name}: {ref} in {time.monotonic() - started:.0f} s")

    def build(self, p: Plan, root: Path, started: float) -> BuiltImage:
        """Build ``p`` from the snapshot at ``root`` (see :func:`snapshot_context`)."""
        self.ensure_base(p.spec.base, p.base_ref, root / "hack" / "debian-base.sh")
        log = self.logs / f"{p.spec.name}-{p.short}.log"
        log.unlink(missing_ok=True)
        mounts: list[str] = []
        if HOST_CA_BUNDLE.is_file():
            mounts = ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
        self.progress(f"{p.spec.name}: podman build {p.spec.dockerfile} -> {p.ref} (log {log})")
        run_logged(
            netns.outside_argv([
                "nice", "-n", "10",
                *self.podman.argv(
                    "build", "--pull=never", "--network", "host", "--layers=false",
                    "--rm", "--force-rm", "--format", "docker",
                    *(f"--ulimit={limit}" for limit in ULIMITS), *mounts,
                    "--file", str(root / p.spec.dockerfile), "--tag", p.ref,
                    *render_build_args(p.args), str(root),
                ),
            ]),
            what=f"podman build of {p.spec.name}", timeout_s=BUILD_TIMEOUT_S, log=log,
            env=self.podman.env(),
        )
        unpacked = float(self.podman.output("image", "inspect", "--format", "{{.Size}}", p.ref))
        archive = p.archive(self.cache_dir)
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_name(f".{archive.name}.tmp")
        partial.unlink(missing_ok=True)
        self.progress(f"{p.spec.name}: podman save -> {archive}")
        try:
            run_logged(
                self.podman.argv("save", "--format", "docker-archive", "--output", str(partial),
                                 p.ref),
                what=f"podman save of {p.spec.name}", timeout_s=SAVE_TIMEOUT_S, log=log,
                env=self.podman.env(),
            )
            os.replace(partial, archive)
        finally:
            partial.unlink(missing_ok=True)
        build_s = round(time.monotonic() - started, 1)
        size_mb = _mb(archive.stat().st_size)
        meta = {
            "name": p.spec.name, "ref": p.ref, "key": p.key, "base_ref": p.base_ref,
            "build_args": p.args, "build_s": build_s, "unpacked_mb": _mb(unpacked),
            "size_mb": size_mb, "built_at": time.time(),
        }
        _write_atomic(p.meta(self.cache_dir), json.dumps(meta, indent=2) + "\n")
        self.prune(p)
        return BuiltImage(
            name=p.spec.name, ref=p.ref, archive=archive, build_s=build_s,
            size_mb=size_mb, cached=False, unpacked_mb=_mb(unpacked),
            cold_build_s=build_s,
        )

    def prune(self, p: Plan) -> None:
        """Older tags of this image and its base, dangling layers, archives beyond the last 2."""
        for repository, keep in ((p.spec.repository, p.ref),
                                 (p.base_ref.rsplit(":", 1)[0], p.base_ref)):
            for old in self.podman.refs(repository):
                if old != keep:
                    with contextlib.suppress(ImageBuildError):
                        self.podman.output("rmi", old)
        self.podman.output("image", "prune", "--force")
        metas = sorted(
            (self.cache_dir / "archives").glob(f"{p.spec.name}-*.json"),
            key=lambda path: path.stat().st_mtime, reverse=True,
        )
        current = p.meta(self.cache_dir)
        others = [m for m in metas if m != current]
        for stale in others[KEEP_ARCHIVES - 1:]:
            stale.with_suffix(".tar").unlink(missing_ok=True)
            stale.unlink(missing_ok=True)


def ensure_images(
    names: Sequence[str] = NAMES,
    *,
    cache_dir: Path | None = None,
    progress: Progress = print,
    root: Path = REPO_ROOT,
) -> dict[str, BuiltImage]:
    """Build (or find in the cache) each image in ``names``; name -> :class:`BuiltImage`.

    A warm call takes the time of hashing the build context and needs no podman.
    """
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise ImageBuildError(f"unknown image {unknown[0]!r} (known: {', '.join(NAMES)})")
    result: dict[str, BuiltImage] = {}
    pending: list[Plan] = []
    for name in dict.fromkeys(names):
        started = time.monotonic()
        p = plan(name, root=root)
        hit = cached_image(p, cache, started)
        if hit is not None:
            result[name] = hit
        else:
            pending.append(p)
    if pending:
        with _locked(cache, progress):
            builder = _Builder(cache, progress)
            builder.sweep()
            for p in pending:
                started = time.monotonic()  # this image's own time, not the one before it
                snapshot = snapshot_context(root, p.spec, cache / "tmp" / f"context-{p.spec.name}")
                try:
                    exact = plan(p.spec.name, root=snapshot)
                    # Another process may have built it meanwhile.
                    hit = cached_image(exact, cache, started)
                    result[p.spec.name] = (
                        hit if hit is not None else builder.build(exact, snapshot, started)
                    )
                finally:
                    shutil.rmtree(snapshot, ignore_errors=True)
    return {name: result[name] for name in dict.fromkeys(names)}


def load_into_podman(image: BuiltImage, cache_dir: Path | None = None) -> Podman:
    """Make sure podman's storage in the cache has ``image`` (``podman load`` of its archive)."""
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    podman = Podman.locate(cache)
    if not podman.exists(image.ref):
        with _locked(cache, print):
            if not podman.exists(image.ref):
                podman.output("load", "--input", str(image.archive), timeout_s=IMPORT_TIMEOUT_S)
    return podman


# ----------------------------------------------------------------------------- command line


def format_table(images: Sequence[BuiltImage]) -> str:
    rows = [("name", "ref", "build s", "size MB", "unpacked MB", "cached", "archive")]
    rows += [
        (i.name, i.ref, f"{i.build_s:.1f}", f"{i.size_mb:.1f}", f"{i.unpacked_mb:.1f}",
         f"yes (cold {i.cold_build_s:.0f} s)" if i.cached else "no", str(i.archive))
        for i in images
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line on stderr and exit status 2 (argparse prints the usage too)."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m elastiserve.testing.images",
        description="Build the operator and serving images from Debian bases (cached).",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    build = sub.add_parser("build", help="build or reuse the images; print a table")
    build.add_argument("--only", action="append", choices=NAMES,
                       help="build only this image (repeatable)")
    build.add_argument("--cache-dir", type=Path, default=None,
                       help=f"cache directory (default ${CACHE_ENV} or "
                            "~/.cache/elastiserve/images)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names: list[str] = args.only or list(NAMES)
    try:
        images = ensure_images(names, cache_dir=args.cache_dir,
                               progress=lambda line: print(line, file=sys.stderr, flush=True))
    except ImageBuildError as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("images: interrupted (no partial archive was kept)", file=sys.stderr)
        return 130
    print(format_table(list(images.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
