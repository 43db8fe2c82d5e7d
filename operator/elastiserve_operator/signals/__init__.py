"""Gatherers: turn what the cluster exports into the policy's ``Observation``.

``prometheus`` (async, aiohttp) answers latency and request-rate queries; ``nodes`` (pure)
turns Node and NodeMetrics objects into ``NodePressure``. The policy never imports these.
"""
