"""Pods to scrape, found through the API server and written for Prometheus's file discovery.

What Kubernetes service discovery with the common ``prometheus.io/*`` annotation relabelling
does in a cluster, for a Prometheus built without it (Debian's): every Running pod with the
annotation ``prometheus.io/scrape: "true"`` and an IP is a target at
``<podIP>:<prometheus.io/port>`` with the labels ``namespace``, ``pod`` and ``node``. The file
is rewritten atomically, and only when the set changes, from a thread that polls the API once
per interval.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

SCRAPE = "prometheus.io/scrape"
PORT = "prometheus.io/port"


def targets_for(pods: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The file_sd entries for ``pods`` (API objects as dicts), sorted for a stable file."""
    entries: list[dict[str, Any]] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        status = pod.get("status") or {}
        ip = status.get("podIP")
        if annotations.get(SCRAPE) != "true" or status.get("phase") != "Running" or not ip:
            continue
        if meta.get("deletionTimestamp"):
            continue
        port = annotations.get(PORT)
        if not port or not str(port).isdigit():
            continue
        entries.append({
            "targets": [f"{ip}:{port}"],
            "labels": {
                "namespace": str(meta.get("namespace", "")),
                "pod": str(meta.get("name", "")),
                "node": str((pod.get("spec") or {}).get("nodeName", "")),
            },
        })
    return sorted(entries, key=lambda e: (e["labels"]["namespace"], e["labels"]["pod"]))


@contextlib.contextmanager
def discover_pods(
    list_pods: Callable[[], Sequence[Mapping[str, Any]]],
    targets_file: Path,
    interval_s: float = 1.0,
) -> Iterator[Path]:
    """Keep ``targets_file`` current while the block runs; ``list_pods`` reads the API."""
    targets_file.parent.mkdir(parents=True, exist_ok=True)
    targets_file.write_text("[]\n", encoding="utf-8")
    stop = threading.Event()

    def run() -> None:
        last = "[]\n"
        while not stop.is_set():
            with contextlib.suppress(Exception):  # an API hiccup: keep the last targets
                text = json.dumps(targets_for(list_pods()), indent=1) + "\n"
                if text != last:
                    tmp = targets_file.with_suffix(".tmp")
                    tmp.write_text(text, encoding="utf-8")
                    tmp.replace(targets_file)
                    last = text
            stop.wait(interval_s)

    thread = threading.Thread(target=run, name="pod-discovery", daemon=True)
    thread.start()
    try:
        yield targets_file
    finally:
        stop.set()
        thread.join(timeout=10)
