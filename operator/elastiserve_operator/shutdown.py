"""Whether the operator has begun to exit, so that kopf does not start a policy daemon again.

Why this exists (kopf 1.45): on SIGTERM kopf's daemon killer stops every running daemon with
the reason ``OPERATOR_EXITING`` *once*, while the queue workers go on handling the watch
events still queued (``settings.queueing.exit_timeout``). A daemon stopped for that reason
is not "forever stopped", so the next queued event of its ``ElasticModel`` spawns it again,
and nothing stops the new one: it outlives the cleanup (evaluating on closed sessions) and
is left to kopf's last sweep over "hung" tasks, which waits 5 s and then re-raises any
exception of any task that ended meanwhile. The daemon's ``stopped.wait(timeout)`` runs in
a task of kopf's own whose normal end is ``TimeoutError`` (kopf swallows it in the daemon),
so a wait that ran out in those 5 s made ``kopf.operator`` raise a bare ``TimeoutError``:
a traceback and a non-zero exit code on every rolling update.

Two guards, each enough for the case above:

* The daemon's ``when`` filter (``may_spawn``) reads a flag shared through kopf's memo: kopf
evaluates it right before spawning, in the same step, so once the flag is set no daemon
starts again. The first daemon stopped for ``OPERATOR_EXITING`` sets it (a respawn of the
same model can only come after that daemon has returned), and so does the cleanup handler.
* The daemon sleeps with ``sleep_unless_stopped``: the time limit is ours, so when it runs
out kopf's waiting task is cancelled rather than ended with ``TimeoutError``. A daemon that
still gets started in the exit (a model first seen in the last queued events, while no
daemon ran to set the flag) is then cancelled after kopf's 5 s like any hung task, with
nothing to re-raise.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import kopf

__all__ = ["Shutdown", "is_operator_exit", "may_spawn", "shutdown_of", "sleep_unless_stopped"]


@dataclass
class Shutdown:
    """One per process, in kopf's memo: kopf gives each object a shallow copy of the memo,
    so the flag lives in this shared object rather than in a memo attribute."""

    begun: bool = False


def is_operator_exit(reason: kopf.DaemonStoppingReason | None) -> bool:
    """Whether a daemon's stop reason says the whole operator is exiting (not a pause for a
    peer, a deleted object or a filter mismatch, after which kopf rightly respawns it)."""
    return reason is not None and kopf.DaemonStoppingReason.OPERATOR_EXITING in reason


def shutdown_of(memo: Any) -> Shutdown:
    """The process's flag; a memo without one (handlers called before ``startup``) gets a
    fresh one, never set, which is what such an early call should see."""
    found = getattr(memo, "shutdown", None)
    return found if isinstance(found, Shutdown) else Shutdown()


def may_spawn(memo: Any, **_: Any) -> bool:
    """kopf ``when`` filter of the policy daemon: no new daemon once the exit has begun."""
    return not shutdown_of(memo).begun


async def sleep_unless_stopped(stopped: kopf.DaemonStopped, seconds: float) -> None:
    """Sleep ``seconds`` or until the daemon is stopped, whichever comes first.

    Not ``stopped.wait(seconds)``: that runs the wait in a task of kopf's whose normal end,
    when the time runs out, is ``TimeoutError``, and kopf re-raises it from ``kopf.operator``
    if the task was still pending when the exit began (see the module docstring). An
    untimed wait, cancelled when our time runs out, ends cancelled instead (written with
    ``asyncio.wait`` rather than ``asyncio.timeout``, which Python 3.10 lacks)."""
    waiter = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({waiter}, timeout=max(0.0, seconds))
    finally:
        waiter.cancel()  # a no-op when the daemon was stopped in time
