"""The serving benchmark's levels on a GPU: forward-only capacity, device memory, graphs checked.

Why: issue 18 item 4 — on a GPU node the levels run on the device (``device: cuda``), and what a
narrower level buys there is capacity and device memory, which this measures with the runtime's
own code path (:class:`ElasticRuntime` built with ``device="cuda"``: levels moved once, traced
graphs and then CUDA graphs per batch size only where verified equal, memory per level from the
allocator's peak).

Per level and batch size: samples/s of forward + softmax (CUDA-synchronised, median of timed
runs), with the default runtime and with an eager one in the same run (their ratio), the batch
sizes each level got CUDA graphs for, and the
device memory the runtime reports. The model is the serving benchmark's (ResNet-20, 3x224x224,
``benchmarks/serving.py`` ``write_bundles``), random weights.

Without a CUDA device it refuses in one line with exit code 2 (nothing to measure here).

    .venv/bin/python benchmarks/gpu_check.py            # writes benchmarks/results/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def time_forward(module: Any, x: Any, seconds: float) -> float:
    """Samples per second of ``module(x)`` + softmax, synchronised, median over ``seconds``."""
    import torch

    times: list[float] = []
    with torch.inference_mode():
        for _ in range(3):
            module(x)
        torch.cuda.synchronize()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline or len(times) < 5:
            began = time.perf_counter()
            torch.softmax(module(x).float(), dim=1)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
    return float(x.shape[0]) / statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default="1,8,32",
                        help="comma-separated batch sizes (default 1,8,32)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per measurement")
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--output", type=Path, default=RESULTS / "gpu_check.json")
    args = parser.parse_args(argv)
    try:
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        if not sizes or min(sizes) < 1:
            raise ValueError
    except ValueError:
        print(f"gpu_check: --batch-sizes must be positive integers, got {args.batch_sizes!r}",
              file=sys.stderr)
        return 2

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this host (torch.cuda.is_available() is False); "
              "run it on a GPU machine", file=sys.stderr)
        return 2

    sys.path.insert(0, str(REPO / "benchmarks"))
    from serving import write_bundles  # the serving benchmark's model

    from elastiserve_serve.bundle_levels import load_levels
    from elastiserve_serve.runtime import ElasticRuntime, RuntimeSettings

    load_start = os.getloadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="elastiserve-gpu-") as tmp:
        bundle = write_bundles(Path(tmp), args.width_mult)["levels"]
        levels = load_levels(bundle)
    # The default path (traced graphs and CUDA graphs where verified equal) against eager.
    runtimes = {
        fast: ElasticRuntime(levels, RuntimeSettings(control_file=None, device="cuda",
                                                     trace_levels=fast, cuda_graphs=fast,
                                                     worker_choice=False))
        for fast in (True, False)
    }
    traced = runtimes[True]
    traced.warm_up(max(sizes))
    rows: list[dict[str, Any]] = []
    for index, name in enumerate(levels.names):
        row: dict[str, Any] = {
            "name": name,
            "device_memory_bytes": traced.level_memory[name],
            "graph": type(getattr(traced.levels.modules[index], "inner",
                                  traced.levels.modules[index])).__name__,
            "cuda_graph_sizes": list(getattr(traced.levels.modules[index], "sizes", ())),
            "forward_only_rps": {}, "eager_rps": {}, "default_over_eager": {},
        }
        for batch in sizes:
            x = torch.zeros((batch, *levels.input_spec.shape), device="cuda")
            fast = time_forward(traced.levels.modules[index], x, args.seconds)
            eager = time_forward(runtimes[False].levels.modules[index], x, args.seconds)
            row["forward_only_rps"][str(batch)] = round(fast, 1)
            row["eager_rps"][str(batch)] = round(eager, 1)
            row["default_over_eager"][str(batch)] = round(fast / eager, 3)
        rows.append(row)
        print(f"{name}: memory {row['device_memory_bytes'] / 2**20:8.1f} MiB  "
              f"{row['graph']:>16}  CUDA graphs at {row['cuda_graph_sizes']}  rps by batch "
              f"{row['forward_only_rps']}", flush=True)
    top = str(max(sizes))
    result = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "levels": rows,
        "narrowest_vs_full_forward_only": round(
            rows[0]["forward_only_rps"][top] / rows[-1]["forward_only_rps"][top], 2),
        "model": {"architecture": "resnet20", "width_mult": args.width_mult,
                  "input": "3x224x224", "weights": "random (accuracy not measured)"},
        "method": "in process, the runtime's own device path (levels moved to CUDA once, "
                  "traced where verified equal to eager on a probe, then CUDA graphs per "
                  "profiled batch size where verified equal), forward + softmax, "
                  "torch.cuda.synchronize around each run, median; memory: weights + peak "
                  "activations of one forward at the largest batch",
        "not_measured": "end to end through TorchServe on the GPU",
        "machine": {"load_avg_start": [round(x, 2) for x in load_start],
                    "load_avg_end": [round(x, 2) for x in os.getloadavg()]},
        "duration_s": round(time.monotonic() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
