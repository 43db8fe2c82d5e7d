"""``elastiserve operator`` / ``python -m elastiserve_operator``: run the operator.

Flags override the ``ELASTISERVE_*`` environment (``settings.ENV``), which the Helm chart
sets. Peering: with ``--peering NAME`` several replicas run and only the one kopf elects
acts (a ``ClusterKopfPeering`` ``NAME`` must exist, see ``crd/kopf-peering.yaml``);
without it the operator runs standalone.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from types import SimpleNamespace

import kopf

from .metrics import OperatorMetrics
from .settings import ENV, settings_from_env

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prometheus-url", help=f"Prometheus base URL (${ENV['prometheus_url']})")
    parser.add_argument(
        "--namespace", action="append", default=None,
        help=f"watch only this namespace; repeatable (${ENV['namespaces']}, comma list); "
        "default: cluster-wide",
    )
    parser.add_argument("--metrics-port", type=int, help=f"0 disables (${ENV['metrics_port']})")
    parser.add_argument(
        "--liveness", help=f"kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz "
        f"(${ENV['liveness']})",
    )
    parser.add_argument("--peering", help=f"kopf peering name (${ENV['peering']})")
    parser.add_argument("--serving-image", help=f"default serving image (${ENV['serving_image']})")
    parser.add_argument("--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_env(os.environ)
    except ValueError as error:
        # A bad chart value: refuse to start (the pod crash-loops with this line in its
        # log) rather than run every model on a value nobody meant.
        print(f"elastiserve-operator: invalid setting: {error}", file=sys.stderr)
        return 2
    overrides = {
        "prometheus_url": args.prometheus_url,
        "namespaces": tuple(args.namespace) if args.namespace else None,
        "metrics_port": args.metrics_port,
        "liveness_endpoint": args.liveness,
        "peering": args.peering,
        "serving_image": args.serving_image,
    }
    settings = dataclasses.replace(
        settings, **{k: v for k, v in overrides.items() if v is not None}
    )
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    from . import handlers  # noqa: F401  (registers the handlers)

    memo = SimpleNamespace(operator_settings=settings, metrics=OperatorMetrics())
    asyncio.run(
        kopf.operator(
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=settings.liveness_endpoint,
            peering_name=settings.peering or None,
            standalone=not settings.peering,
            memo=kopf.Memo(vars(memo)),
        )
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="elastiserve-operator", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args())
