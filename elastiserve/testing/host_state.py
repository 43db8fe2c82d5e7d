"""What a real node changes on the host, found and undone: mounts, cgroups, processes, sysctls.

kubelet and containerd leave state outside their processes: overlay and tmpfs mounts under
their directories, a shared bind mount of kubelet's root directory, ``kubepods`` cgroup trees
in every cgroup v1 hierarchy, container shims that outlive containerd, and global kernel
settings. Each function here either lists what is left (for the teardown assertions) or
removes it (teardown, and the sweep after a crashed run). Every path checked is under the
node's own run directory except the cgroup trees, whose name kubelet fixes (``kubepods``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return (
        field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
        .replace("\\134", "\\")
    )


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below ``root``, deepest first (the order to unmount them in)."""
    prefix = str(root.resolve())
    found: list[Path] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if len(fields) > 4:
                point = _unescape(fields[4])
                if point == prefix or point.startswith(prefix + "/"):
                    found.append(Path(point))
    return sorted(found, key=lambda p: (len(p.parts), str(p)), reverse=True)


def unmount_all(root: Path, rounds: int = 5) -> list[Path]:
    """Unmount everything under ``root`` (stacked mounts need several rounds); what stays."""
    for _ in range(rounds):
        left = mounts_under(root)
        if not left:
            return []
        for point in left:
            done = subprocess.run(
                ["umount", str(point)], capture_output=True, timeout=20, check=False
            )
            if done.returncode != 0:
                subprocess.run(
                    ["umount", "-l", str(point)], capture_output=True, timeout=20, check=False
                )
    return mounts_under(root)


def hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, named ones, the v2 one)."""
    if not CGROUP_ROOT.is_dir():
        return []
    found: list[Path] = []
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        if hierarchy.is_dir() and not hierarchy.is_symlink() and os.path.ismount(hierarchy):
            found.append(hierarchy)
    if not found and os.path.ismount(CGROUP_ROOT):
        found.append(CGROUP_ROOT)  # a pure cgroup v2 host
    return found


def cgroup_trees(name: str) -> list[Path]:
    """The ``name`` directories at the top of every mounted cgroup hierarchy."""
    return [hierarchy / name for hierarchy in hierarchies() if (hierarchy / name).is_dir()]


def make_cgroup_root(name: str) -> None:
    """Create ``name`` at the top of every hierarchy (kubelet refuses a missing cgroupRoot).

    In the v1 cpuset hierarchy a new cgroup starts with no CPUs and no memory nodes, and no
    task can join it: copy the parent's.
    """
    for hierarchy in hierarchies():
        directory = hierarchy / name
        directory.mkdir(exist_ok=True)
        for leaf in ("cpuset.cpus", "cpuset.mems"):
            source = hierarchy / leaf
            if source.exists() and not (directory / leaf).read_text().strip():
                (directory / leaf).write_text(source.read_text())


def _tasks(directory: Path) -> list[int]:
    pids: list[int] = []
    for leaf in ("cgroup.procs", "tasks"):
        with contextlib.suppress(OSError, ValueError):
            pids.extend(int(x) for x in (directory / leaf).read_text().split())
    return pids


def kill_cgroup_tasks(trees: Iterable[Path]) -> None:
    """SIGKILL every process in the given cgroup trees (containers a crash left running)."""
    for tree in trees:
        for directory, _dirs, _files in os.walk(tree):
            for pid in _tasks(Path(directory)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


def remove_cgroup_trees(trees: Iterable[Path], timeout_s: float = 10.0) -> list[Path]:
    """rmdir each tree depth-first (a cgroup goes only once its tasks are gone); what stays."""
    pending = list(trees)
    deadline = time.monotonic() + timeout_s
    while True:
        kill_cgroup_tasks(pending)
        for tree in pending:
            for directory, _dirs, _files in sorted(
                os.walk(tree, topdown=False), key=lambda w: -len(Path(w[0]).parts)
            ):
                with contextlib.suppress(OSError):
                    Path(directory).rmdir()
        pending = [tree for tree in pending if tree.exists()]
        if not pending or time.monotonic() > deadline:
            return pending
        time.sleep(0.1)


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """(pid, command line) of live processes whose command line contains ``text``.

    containerd's shims carry its socket path in their arguments, so this finds the shims of
    one node's containerd even after containerd itself is gone.
    """
    me = os.getpid()
    found: list[tuple[int, str]] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        with contextlib.suppress(OSError):
            raw = (proc / "cmdline").read_bytes()
            if not raw:
                continue  # a kernel thread or a zombie
            cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
            if text in cmdline:
                found.append((int(proc.name), cmdline))
    return found


def kill_processes(pids: Iterable[int], grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s`` whatever is left."""
    wanted = list(pids)
    for pid in wanted:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in wanted):
        time.sleep(0.05)
    for pid in wanted:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_sysctls(keys: Iterable[str]) -> dict[str, str]:
    """Current values of ``/proc/sys`` keys (written ``vm/overcommit_memory``)."""
    values: dict[str, str] = {}
    for key in keys:
        with contextlib.suppress(OSError):
            values[key] = (Path("/proc/sys") / key).read_text().strip()
    return values


def restore_sysctls(saved: Mapping[str, str]) -> dict[str, str]:
    """Write recorded values back; returns the keys that still differ (key -> value now)."""
    for key, value in saved.items():
        path = Path("/proc/sys") / key
        with contextlib.suppress(OSError):
            if path.read_text().strip() != value:
                path.write_text(value + "\n")
    now = read_sysctls(saved)
    return {k: now.get(k, "?") for k, v in saved.items() if now.get(k) != v}
