"""The cluster-less mode: TorchServe, a local Prometheus and the operator's policy on one machine.

Nothing is imported here so that ``python -m elastiserve.local.demo`` and the CLI's lazy command
registration load only what they use (the modules below need the serve and operator extras).
"""
