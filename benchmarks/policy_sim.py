"""Compare level policies on a simulated 30-minute load trace, with a bundle's measured levels.

    .venv/bin/python benchmarks/policy_sim.py --profile BUNDLE/manifest.json --objective-ms 50

Prints a table and writes ``benchmarks/results/policy_sim.json`` with keys ``policies``
(``name, violation_pct, mean_acc, p95_ms, switches`` and ``rejected_pct``), ``trace``,
``profile`` (which manifest, its sha256, and the levels read from it) and ``settings``. The
simulation itself is ``elastiserve_operator.simulate`` (see its docstring for the model).

``--profile`` is required: a bundle manifest (or any JSON with a ``levels`` list, see
``elastiserve_operator.profile.profile_from_manifest``) whose every level carries a measured
``accuracy`` and a latency or capacity. Without one the script refuses (one line, exit 2): a
comparison of delivered accuracy is only worth the accuracies it is fed, and typed-in numbers
once stood in for a bundle that did not exist yet.
"""

from __future__ import annotations

import argparse
import hashlib
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

class ProfileRefused(ValueError):
    """The profile cannot drive the simulation; the message is the one line the CLI prints."""


def load_measured_profile(path: Path | None) -> tuple[tuple[LevelProfile, ...], dict[str, Any]]:
    """Read a bundle manifest and return its levels and where they came from.

    Refuses a missing path, unreadable JSON, and any level without a measured accuracy or a
    latency/capacity: the simulator has no numbers of its own to fall back on.
    """
    if path is None:
        raise ProfileRefused(
            "--profile is required: a bundle manifest with measured per-level accuracy and "
            "latency (typed-in numbers are not used)"
        )
    try:
        data = path.read_bytes()
        raw = json.loads(data)
    except OSError as exc:
        raise ProfileRefused(f"cannot read profile {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ProfileRefused(f"profile {path} is not JSON: {exc.msg} (line {exc.lineno})") from exc
    if not isinstance(raw, dict):
        raise ProfileRefused(f"profile {path} is not a JSON object with a 'levels' list")
    try:
        profile = profile_from_manifest(raw)
    except (ValueError, TypeError) as exc:
        raise ProfileRefused(f"profile {path}: {exc}") from exc
    unmeasured = [lv.name for lv in profile if lv.accuracy is None]
    if unmeasured:
        raise ProfileRefused(
            f"profile {path}: no measured accuracy for level(s) {', '.join(unmeasured)}"
        )
    architecture = raw.get("architecture")
    provenance = {
        "source": str(path),
        "sha256": hashlib.sha256(data).hexdigest(),
        "architecture": architecture.get("name") if isinstance(architecture, dict) else None,
        "schema_version": raw.get("schema_version"),
        "input": raw.get("input"),
    }
    return profile, provenance


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

    try:
        profile, provenance = load_measured_profile(args.profile)
    except ProfileRefused as exc:
        print(f"policy_sim: {exc}", file=sys.stderr)
        return 2
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
            **provenance,
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
