"""Measure this host before TorchServe registers the model (``--batch-size/--threads auto``).

What is timed is the worker's own batch path for ``b`` one-sample requests at the widest level:
:meth:`ElasticRuntime.handle` on ``.npy`` bodies (decode, batch normalisation, forward pass,
softmax and top-k), built from the archive's own handler settings (traced graphs, device), so the
profile sees what serving will run. :mod:`.runtime.batch_plan` turns the timings into a plan.

Why in a child process: the serve command itself must stay small (it holds no model while it
serves; TorchServe's workers do), and torch's thread pool is set once per process. The child
loads the levels, warms them up as a worker does (on CUDA that captures the graphs the worker
will replay, :mod:`.runtime.cuda_graphs`), times them and writes one JSON file; its memory is
gone when it exits. It
is bounded by a time limit so a pathological model cannot hold a pod's start forever: past it,
the serve command refuses to start with one line (a pod restarts and says why in its log).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runtime.batch_plan import (
    MAX_AUTO_BATCH,
    Measurement,
    ServingPlan,
    batch_candidates,
    latency_budget_s,
    measure,
    plan,
)
from .runtime.cpu_threads import CPU_REQUEST_ENV

MIN_TIMED_S = 0.3
"""Each configuration is timed at least this long (and at least 5 runs): a pod's start pays
a few seconds for a plan that a node's noise does not decide."""
PROFILE_TIMEOUT_S = 300.0
"""Longest the child may take (a large model on one thread, every batch up to the budget)."""


class ProfileError(RuntimeError):
    """The profile could not run (the child failed, timed out or printed nothing usable)."""


@dataclass(frozen=True)
class ProfileResult:
    plan: ServingPlan
    measurements: tuple[Measurement, ...]
    level: str
    seconds: float  # the child's wall time, model load included
    cores: float  # the CPU the plan counted on for one worker

    def to_json(self) -> dict[str, object]:
        return {
            "plan": self.plan.to_json(),
            "level": self.level,
            "cores": round(self.cores, 3),
            "profile_s": round(self.seconds, 2),
            "measurements": [
                {"threads": m.threads, "batch": m.batch, "batch_ms": round(m.seconds * 1000, 3),
                 "requests_per_s": round(m.requests_per_s, 1)}
                for m in self.measurements
            ],
        }


def worker_cores(workers: int, env: Mapping[str, str] | None = None) -> float:
    """The CPU one worker may count on: the pod's CPU request over its workers where the
    operator passed it (:mod:`.runtime.cpu_threads`), else this process's usable cores over the
    workers (a laptop, ``make demo``)."""
    env = os.environ if env is None else env
    workers = max(1, workers)
    try:
        milli = int(env.get(CPU_REQUEST_ENV, ""))
    except ValueError:
        milli = 0
    if milli > 0:
        return milli / 1000 / workers
    return len(os.sched_getaffinity(0)) / workers


def host_threads(workers: int, env: Mapping[str, str] | None = None) -> int:
    """The most threads one worker may use: its whole cores (:func:`worker_cores`), at least
    one."""
    return max(1, int(worker_cores(workers, env)))


class ProfileStopped(ProfileError):
    """The serve command was told to stop (SIGTERM, Ctrl-C) while the profile ran."""


def profile_mar(mar: Path, *, objective_ms: float, max_batch_delay_ms: int,
                thread_counts: tuple[int, ...], cores: float,
                batches: tuple[int, ...] | None = None, handler: Mapping[str, Any] | None = None,
                stop: threading.Event | None = None,
                timeout_s: float = PROFILE_TIMEOUT_S) -> ProfileResult:
    """Extract ``mar`` (already checked by :func:`.archive_check.check_archive`) and profile it
    in a child process, at ``batches`` (default 1, 2, 4, ... :data:`MAX_AUTO_BATCH`) and
    ``thread_counts``, with the archive's ``handler`` settings (its ``model-config.yaml``'s
    ``handler:`` section, as :func:`.mar_overrides.read_config` reads it).

    The child is polled, not waited on: ``stop`` (the serve command's SIGTERM) ends it and
    raises :class:`ProfileStopped`, so a pod told to stop while it measures stops at once."""
    batches = batches or batch_candidates(MAX_AUTO_BATCH)
    with tempfile.TemporaryDirectory(prefix="elastiserve-profile-") as tmp:
        with zipfile.ZipFile(mar) as archive:
            archive.extractall(Path(tmp) / "model")
        result_path = Path(tmp) / "result.json"
        command = [
            sys.executable, "-m", "elastiserve_serve.serve_profile",
            "--model-dir", str(Path(tmp) / "model"), "--result", str(result_path),
            "--handler-json", json.dumps(dict(handler or {})),
            "--objective-ms", repr(objective_ms), "--max-batch-delay-ms", str(max_batch_delay_ms),
            "--threads", ",".join(map(str, thread_counts)),
            "--batches", ",".join(map(str, batches)),
        ]
        began = time.monotonic()
        with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) as child:
            try:
                stderr = _wait_for(child, timeout_s, stop)
            except BaseException:
                child.kill()
                raise
            elapsed = time.monotonic() - began
            if child.returncode != 0:
                tail = (stderr.strip().splitlines() or ["(no output)"])[-1]
                raise ProfileError(f"the profile failed (exit {child.returncode}): {tail[:300]}")
        try:
            return result_from_json(json.loads(result_path.read_text()), elapsed, cores)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ProfileError(f"the profile wrote no usable result ({error})") from None


def _wait_for(child: subprocess.Popen[str], timeout_s: float,
              stop: threading.Event | None) -> str:
    """The child's stderr once it exits; raises after ``timeout_s`` or once ``stop`` is set."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, stderr = child.communicate(timeout=0.2)
            return stderr or ""
        except subprocess.TimeoutExpired:
            pass
        if stop is not None and stop.is_set():
            raise ProfileStopped("stopped while profiling")
        if time.monotonic() > deadline:
            raise ProfileError(f"the profile took longer than {timeout_s:g} s")


def result_from_json(body: Mapping[str, Any], seconds: float, cores: float) -> ProfileResult:
    """The child's measurements planned for ``cores`` (:func:`.runtime.batch_plan.plan`)."""
    measurements = tuple(Measurement(int(m["threads"]), int(m["batch"]), float(m["seconds"]))
                         for m in body["measurements"])
    chosen = plan(measurements, float(body["budget_s"]), cores=cores)
    return ProfileResult(chosen, measurements, str(body["level"]), seconds, cores)


def _handler_settings(handler: Mapping[str, Any]) -> dict[str, Any]:
    """The archive's ``handler:`` settings as the worker will read them (its device override
    too), with what the profile must not do: follow a control file or choose per batch."""
    settings = dict(handler)
    for key in ("share_storage", "default_level"):  # the widest level is the one timed
        settings.pop(key, None)
    if os.environ.get("ELASTISERVE_DEVICE"):
        settings["device"] = os.environ["ELASTISERVE_DEVICE"]
    settings.update(control_file="", worker_choice=False, threads=0, warmup_batch=0)
    return settings


def _child(args: argparse.Namespace) -> int:
    """Load the levels as a worker does (warm-up included: on CUDA that captures the graphs),
    time the widest one's batch path, write the measurements as JSON to ``--result``."""
    import numpy as np
    import torch

    from .bundle_levels import load_levels
    from .runtime.engine import ElasticRuntime, RawRequest, Success
    from .runtime.settings import settings_from_mapping

    batches = tuple(int(b) for b in args.batches.split(","))
    settings = settings_from_mapping(_handler_settings(json.loads(args.handler_json)))
    runtime = ElasticRuntime(load_levels(args.model_dir), settings)
    runtime.warm_up(max(batches))
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((1, *runtime.levels.input_spec.shape), dtype=np.uint8))
    requests = [RawRequest(buffer.getvalue())] * max(batches)

    def run(batch: int) -> None:
        outcomes = runtime.handle(requests[:batch])
        if not all(isinstance(o, Success) for o in outcomes):
            raise RuntimeError(f"the profile's request was refused: {outcomes[0]}")

    budget = latency_budget_s(args.objective_ms, args.max_batch_delay_ms, settings.worker_target)
    # 0: the worker keeps torch's default; time that count.
    threads = tuple(int(t) or torch.get_num_threads() for t in args.threads.split(","))
    measurements = measure(run, torch.set_num_threads, threads, batches, budget, repeats=5,
                           min_timed_s=MIN_TIMED_S, clock=time.perf_counter)
    args.result.write_text(json.dumps({
        "level": runtime.active,
        "budget_s": budget,
        "measurements": [{"threads": m.threads, "batch": m.batch, "seconds": m.seconds}
                         for m in measurements],
    }))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elastiserve_serve.serve_profile")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True, help="where the JSON goes")
    parser.add_argument("--handler-json", default="{}", help="the archive's handler: settings")
    parser.add_argument("--objective-ms", type=float, required=True)
    parser.add_argument("--max-batch-delay-ms", type=int, required=True)
    parser.add_argument("--threads", required=True, help="comma-separated thread counts")
    parser.add_argument("--batches", required=True, help="comma-separated batch sizes")
    return _child(parser.parse_args(argv))


__all__ = ["ProfileError", "ProfileResult", "ProfileStopped", "host_threads", "profile_mar",
           "result_from_json", "worker_cores"]

if __name__ == "__main__":
    sys.exit(main())
