"""The exit guards of ``shutdown``: no daemon respawn once the exit has begun, and a daemon
sleep that never leaves a kopf task ended with ``TimeoutError`` (which ``kopf.operator``
re-raises at exit). Real kopf stoppers, no cluster."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import kopf
import pytest
from kopf._core.intents.stoppers import DaemonStopper  # what kopf hands its daemons

from elastiserve_operator.shutdown import (
    Shutdown,
    is_operator_exit,
    may_spawn,
    shutdown_of,
    sleep_unless_stopped,
)

Reason = kopf.DaemonStoppingReason


@pytest.mark.parametrize(("reason", "exiting"), [
    (None, False),
    (Reason.OPERATOR_EXITING, True),
    (Reason.OPERATOR_EXITING | Reason.DAEMON_SIGNALLED | Reason.DAEMON_CANCELLED, True),
    (Reason.OPERATOR_PAUSING, False),  # a peer took over: kopf respawns it on resume
    (Reason.RESOURCE_DELETED, False),
    (Reason.FILTERS_MISMATCH, False),
])
def test_only_the_operator_exit_counts_as_exit(reason: Any, exiting: bool) -> None:
    assert is_operator_exit(reason) is exiting


def test_the_flag_reaches_every_object_memo() -> None:
    # kopf hands each object a shallow copy of the operator's memo.
    base = kopf.Memo(shutdown=Shutdown())
    daemons_memo, filters_memo = copy.copy(base), copy.copy(base)
    assert may_spawn(filters_memo)
    shutdown_of(daemons_memo).begun = True
    assert not may_spawn(filters_memo)


def test_a_memo_before_startup_may_spawn() -> None:
    assert may_spawn(kopf.Memo())
    assert may_spawn(kopf.Memo(shutdown="not ours"))


async def _tasks_ended_by(call: Callable[[], Awaitable[None]]) -> list[asyncio.Task[Any]]:
    """Run ``call`` and return every task created meanwhile (all done by then)."""
    loop = asyncio.get_running_loop()
    created: list[asyncio.Task[Any]] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any],
                **kwargs: Any) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        created.append(task)
        return task

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    try:
        await call()
    finally:
        loop.set_task_factory(None)
    await asyncio.gather(*created, return_exceptions=True)
    return created


def _failed(tasks: list[asyncio.Task[Any]]) -> list[BaseException | None]:
    return [t.exception() for t in tasks if not t.cancelled() and t.exception() is not None]


def test_kopf_timed_wait_ends_its_task_with_timeout_error() -> None:
    """The root cause, pinned: if kopf stops doing this, ``sleep_unless_stopped`` may go."""

    async def main() -> list[BaseException | None]:
        stopped = DaemonStopper().async_waiter
        return _failed(await _tasks_ended_by(lambda: _await(stopped.wait(0.01))))

    assert [type(e) for e in asyncio.run(main())] == [TimeoutError]


def test_sleep_runs_out_without_a_failed_task() -> None:
    async def main() -> tuple[list[BaseException | None], bool]:
        stopper = DaemonStopper()
        tasks = await _tasks_ended_by(lambda: sleep_unless_stopped(stopper.async_waiter, 0.01))
        return _failed(tasks), bool(stopper.async_waiter)

    assert asyncio.run(main()) == ([], False)


def test_sleep_ends_when_the_daemon_is_stopped() -> None:
    async def main() -> None:
        stopper = DaemonStopper()
        asyncio.get_running_loop().call_soon(stopper.set, Reason.OPERATOR_EXITING)
        tasks = await _tasks_ended_by(
            lambda: asyncio.wait_for(sleep_unless_stopped(stopper.async_waiter, 3600), 10))
        assert _failed(tasks) == []
        assert is_operator_exit(stopper.async_waiter.reason)

    asyncio.run(main())


def test_a_past_deadline_returns_at_once() -> None:
    async def main() -> None:
        await asyncio.wait_for(sleep_unless_stopped(DaemonStopper().async_waiter, -5.0), 10)

    asyncio.run(main())


async def _await(awaitable: Awaitable[Any]) -> None:
    await awaitable
