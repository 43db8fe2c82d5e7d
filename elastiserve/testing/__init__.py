"""Real components for tests: a local Kubernetes control plane, Prometheus and helpers.

Nothing here is a fake: each helper starts the real binary on loopback, waits for it with a
deadline and stops it (and everything it started) when the test ends.
"""
