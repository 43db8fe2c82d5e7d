"""Compare level policies on a simulated 30-minute load trace.

    .venv/bin/python benchmarks/policy_sim.py                       # placeholder profile
    .venv/bin/python benchmarks/policy_sim.py --profile manifest.json --objective-ms 50

Prints a table and writes ``benchmarks/results/policy_sim.json`` with keys ``policies``
(``name, violation_pct, mean_acc, p95_ms, switches`` and ``rejected_pct``), ``trace``,
``profile`` and ``settings``. The simulation itself is
``elastiserve_operator.simulate`` (see its docstring for the model).

The default profile is a PLACEHOLDER until the measured bundle profile exists: ResNet-20
on Fashion-MNIST at 25/50/75/100 % channels, capacities 4.0/2.4/1.5/1.0 x the full level's,
accuracies 90.5/92.3/93.1/93.5 %, full-level batch-1 time 8 ms. ``--profile`` takes a
bundle manifest (or any JSON with a ``levels`` list, see
``elastiserve_operator.profile.profile_from_manifest``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from elastiserve_operator.profile import LevelProfile, profile_from_manifest
from elastiserve_operator.simulate import (
    Controller,
    PolicyController,
    SimConfig,
    SimResult,
    StaticController,
    ramp_trace,
    simulate,
    standard_trace,
)
from elastiserve_operator.spec import ElasticModelSpec, parse_spec

RESULTS = Path(__file__).parent / "results" / "policy_sim.json"

PLACEHOLDER_PROFILE = {
    "placeholder": True,
    "model": "resnet20-fashion-mnist",
    "levels": [
        {"name": "w25", "latency_ms_b1": 8.0 / 4.0, "accuracy": 0.905},
        {"name": "w50", "latency_ms_b1": 8.0 / 2.4, "accuracy": 0.923},
        {"name": "w75", "latency_ms_b1": 8.0 / 1.5, "accuracy": 0.931},
        {"name": "w100", "latency_ms_b1": 8.0, "accuracy": 0.935},
    ],
}


def build_spec(levels: int, objective_ms: int, workers: int, mode: str) -> ElasticModelSpec:
    """The ElasticModel the simulated operator runs; policy settings at their defaults."""
    return parse_spec(
        {
            "model": {"levelCount": levels, "source": {"localPath": "/sim/model.mar"}},
            "objective": {"p95Ms": objective_ms},
            "serving": {"workers": workers},
            "policy": {"mode": mode},
        }
    )


TRACES = {
    "steps": (
        standard_trace,
        "0.5x, 1.3x, 2.0x, 0.8x, 1.8x, 1.1x, 0.4x of the full level's capacity",
    ),
    "ramps": (ramp_trace, "smooth wave 0.3x..1.9x of the full level's capacity, 900 s period"),
}


def run(
    profile: tuple[LevelProfile, ...],
    *,
    objective_ms: int,
    workers: int,
    duration_s: int,
    config: SimConfig,
    trace_name: str = "steps",
) -> tuple[list[SimResult], tuple[float, ...]]:
    """Run the four controllers on one trace; returns results and the trace."""
    predictive = build_spec(len(profile), objective_ms, workers, "Predictive")
    stepping = build_spec(len(profile), objective_ms, workers, "Step")
    full_capacity = profile[-1].service_and_capacity(workers)[1]
    trace = TRACES[trace_name][0](full_capacity, duration_s)
    controllers: list[Controller] = [
        StaticController("static-full", len(profile) - 1),
        StaticController("static-narrowest", 0),
        PolicyController("step", stepping, profile),
        PolicyController("predictive", predictive, profile),
    ]
    results = [simulate(trace, profile, predictive, c, config) for c in controllers]
    return results, trace


def table(results: list[SimResult]) -> str:
    """Fixed-width table for the terminal and the README."""
    header = (
        f"{'policy':<18}{'SLO viol %':>11}{'mean acc %':>11}{'p95 ms':>9}"
        f"{'switches':>10}{'rejected %':>12}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.name:<18}{r.violation_pct:>11.1f}{r.mean_acc:>11.2f}{r.p95_ms:>9.1f}"
            f"{r.switches:>10d}{r.rejected_pct:>12.2f}"
        )
    return "\n".join(lines)


def _policies(results: list[SimResult]) -> list[dict[str, Any]]:
    return [
        {
            "name": r.name,
            "violation_pct": round(r.violation_pct, 2),
            "mean_acc": round(r.mean_acc, 3),
            "p95_ms": round(r.p95_ms, 1),
            "switches": r.switches,
            "rejected_pct": round(r.rejected_pct, 3),
            "seconds_per_level": list(r.level_seconds),
        }
        for r in results
    ]


def _trace(name: str, rates: tuple[float, ...], duration_s: int) -> dict[str, Any]:
    return {
        "name": name,
        "tick_s": 1,
        "duration_s": duration_s,
        "shape": TRACES[name][1],
        "rates_rps": [round(r, 1) for r in rates],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", type=Path, help="bundle manifest / profile JSON")
    parser.add_argument("--objective-ms", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=int, default=1800, help="simulated seconds")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    raw: dict[str, Any] = (
        json.loads(args.profile.read_text()) if args.profile else PLACEHOLDER_PROFILE
    )
    profile = profile_from_manifest(raw)
    config = SimConfig(seed=args.seed)
    runs = {
        name: run(
            profile,
            objective_ms=args.objective_ms,
            workers=args.workers,
            duration_s=args.duration,
            config=config,
            trace_name=name,
        )
        for name in TRACES
    }
    for name, (results, _) in runs.items():
        print(f"trace: {name} ({TRACES[name][1]})")
        print(table(results))
        print()
    results, trace = runs["steps"]
    document = {
        "policies": _policies(results),
        "trace": _trace("steps", trace, args.duration),
        "other_traces": [
            {"trace": _trace(name, rates, args.duration), "policies": _policies(found)}
            for name, (found, rates) in runs.items()
            if name != "steps"
        ],
        "profile": {
            "source": str(args.profile) if args.profile else "placeholder (not measured)",
            "levels": [
                {
                    "name": lv.name,
                    "service_time_ms": round(lv.service_and_capacity(args.workers)[0] * 1e3, 3),
                    "capacity_rps": round(lv.service_and_capacity(args.workers)[1], 1),
                    "accuracy": lv.accuracy,
                }
                for lv in profile
            ],
        },
        "settings": {
            "objective_ms": args.objective_ms,
            "workers": args.workers,
            "replicas": 1,
            "seed": args.seed,
            "scrape_interval_s": config.scrape_interval_s,
            "scrape_lag_s": config.scrape_lag_s,
            "scrape_offset_s": config.scrape_offset_s,
            "query_window_s": config.query_window_s,
            "queue_limit": config.queue_limit,
            "policy": "ElasticModel defaults (stable 60 s, panic 6 s x2, widen 300 s, "
            "tolerance 10 %, headroom 20 %, settle 30 s, interval 5 s)",
            "command": "python benchmarks/policy_sim.py " + " ".join(sys.argv[1:]),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
