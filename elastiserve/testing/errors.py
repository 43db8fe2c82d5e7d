"""Errors raised by the test bed.

One exception type with specific subclasses: a test that only wants "the control plane did not
come up" catches the base class, while the fault tests assert on the precise subclass. Every
message names what to do next, because the person reading it is usually looking at a CI log.
"""

from __future__ import annotations


class ControlPlaneError(RuntimeError):
    """The local control plane could not be started, used or stopped."""


class AssetMissingError(ControlPlaneError):
    """A binary the test bed needs is not in the assets directory."""


class PortInUseError(ControlPlaneError):
    """A port that was asked for explicitly is already bound by someone else."""


class ProcessExitedError(ControlPlaneError):
    """A component exited while the harness was waiting for it to become ready."""

    def __init__(self, message: str, *, name: str, returncode: int) -> None:
        super().__init__(message)
        self.name = name
        self.returncode = returncode


class ReadinessTimeoutError(ControlPlaneError):
    """A component stayed up but never reported ready before its deadline."""


class StaleRunDirError(ControlPlaneError):
    """The run directory holds the state of a run that did not shut down cleanly."""


class LeftoverProcessError(ControlPlaneError):
    """Processes the harness started are still running after teardown."""
