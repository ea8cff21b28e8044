"""The health supervisor: a dying service, agent or app makes the worker unhealthy and exit."""
from __future__ import annotations

import asyncio
import logging

import faust
import pytest
from mode import Service

from streams.health import EXIT_SERVICE_DIED, Health, ReportingSupervisor


class Stops:
    """Records the shutdown requests and hard exits a Health makes."""

    def __init__(self) -> None:
        self.stops = 0
        self.hard_exits: list[int] = []

    def stop(self) -> None:
        self.stops += 1

    def hard_exit(self, code: int) -> None:
        self.hard_exits.append(code)


class Poller(Service):
    """A service whose background task raises after `fail_after` rounds (never if None)."""

    def __init__(self, fail_after: int | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.fail_after = fail_after
        self.rounds = 0
        self.starts = 0

    async def on_start(self) -> None:
        self.starts += 1

    @Service.task
    async def _poll(self) -> None:
        while not self.should_stop:
            self.rounds += 1
            if self.fail_after is not None and self.rounds > self.fail_after:
                raise RuntimeError("poll failed: broker said no")
            await asyncio.sleep(0.01)


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_a_service_that_raises_makes_the_worker_unhealthy_and_stops_it(caplog):
    stops = Stops()
    health = Health(exit_delay=0.05, stop=stops.stop, hard_exit=stops.hard_exit)
    healthy, dying = Poller(), Poller(fail_after=3)
    sup = health.supervisor(healthy, dying)
    with caplog.at_level(logging.CRITICAL, logger="streams.health"):
        await sup.start()  # starts both
        assert healthy.starts == 1 and dying.starts == 1
        await until(lambda: not health.live)
    assert health.reason == "Poller died: RuntimeError: poll failed: broker said no"
    assert stops.stops == 0  # not at once: a probe gets to read the reason first
    await until(lambda: stops.stops == 1)
    assert health.exit_code(0) == EXIT_SERVICE_DIED
    assert [r.levelname for r in caplog.records if r.name == "streams.health"] == ["CRITICAL"]
    assert healthy.rounds > 0 and not healthy.crashed
    # The dead service is not restarted.
    assert dying.starts == 1
    await sup.stop()
    await healthy.stop()
    await dying.stop()


async def test_the_first_failure_is_the_reason_and_is_reported_once():
    stops = Stops()
    health = Health(exit_delay=10.0, stop=stops.stop, hard_exit=stops.hard_exit)
    a, b = Poller(fail_after=1), Poller(fail_after=30)
    sup = health.supervisor(a, b)
    await sup.start()
    await until(lambda: b.crashed)
    await asyncio.sleep(0.05)
    assert health.reason is not None and health.reason.startswith("Poller died")
    first = health.reason
    sup.wakeup()  # the supervisor sees both dead services again: nothing changes
    await asyncio.sleep(0.05)
    assert health.reason == first
    await sup.stop()
    await a.stop()
    await b.stop()


async def test_an_actor_cancelled_by_a_rebalance_is_restarted_not_fatal():
    health = Health(exit_delay=0.01, stop=Stops().stop)
    svc = Poller()
    sup = health.supervisor(svc)
    await sup.start()
    await asyncio.sleep(0.05)  # the supervisor's task is waiting for a wakeup
    await svc.crash(asyncio.CancelledError())  # what Faust does to an actor on a rebalance
    await until(lambda: svc.starts == 2)
    assert health.live and health.exit_code(0) == 0
    await sup.stop()
    await svc.stop()


async def test_a_shutdown_that_hangs_ends_with_a_hard_exit():
    stops = Stops()
    health = Health(exit_delay=0.0, stop_timeout=0.05, stop=stops.stop,
                    hard_exit=stops.hard_exit)
    health.fail("ingest", ValueError("x"))
    await until(lambda: stops.hard_exits == [EXIT_SERVICE_DIED])
    assert stops.stops == 1


def test_a_failure_outside_an_event_loop_stops_at_once():
    stops = Stops()
    health = Health(stop=stops.stop, stop_timeout=60, hard_exit=stops.hard_exit)
    assert health.live and health.exit_code(3) == 3
    health.fail("flush timer", None)
    assert not health.live and health.reason == "flush timer died: stopped"
    assert stops.stops == 1 and health.exit_code(0) == EXIT_SERVICE_DIED


async def test_a_faust_agent_that_raises_makes_the_worker_unhealthy():
    app = faust.App("health-unit", broker="kafka://127.0.0.1:1", web_enabled=False)
    channel = app.channel()

    @app.agent(channel)
    async def apply(stream):
        async for value in stream:
            raise ValueError(f"cannot apply {value}")

    stops = Stops()
    health = Health(exit_delay=0.01, stop=stops.stop, hard_exit=stops.hard_exit)
    health.supervise(app)  # sets app.conf.agent_supervisor
    assert issubclass(app.conf.agent_supervisor, ReportingSupervisor)
    app.flow_control.resume()  # channels are paused until a worker starts
    await apply.start()
    await asyncio.sleep(0.05)  # the agent's supervisor is waiting for a wakeup
    try:
        await channel.send(value=7)
        await until(lambda: not health.live)
        assert health.reason == (
            "agent tests.unit.test_health_service.apply died: ValueError: cannot apply 7")
        await until(lambda: stops.stops == 1)
    finally:
        await apply.stop()


@pytest.mark.parametrize("crash", ["timer", "app"])
async def test_an_app_crash_is_reported_not_ended_at_once(crash):
    """A Faust timer that raises crashes the app (mode's add_future); the app is supervised."""
    app = Poller()  # stands in for the Faust app: a mode Service with conf
    app.conf = type("Conf", (), {"agent_supervisor": None})()
    stops = Stops()
    health = Health(exit_delay=0.01, stop=stops.stop, hard_exit=stops.hard_exit)
    sup = health.supervise(app)
    await sup.start()
    await asyncio.sleep(0.05)  # the supervisor's task is waiting for a wakeup

    async def timer() -> None:
        raise OverflowError("flush failed")

    if crash == "timer":
        app.add_future(timer())
    else:
        await app.crash(OverflowError("flush failed"))
    await until(lambda: not health.live)
    assert health.reason == "Poller died: OverflowError: flush failed"
    assert not sup.crashed  # it is not a child of the app: it outlives the crash
    await until(lambda: stops.stops == 1)
    await sup.stop()
    await app.stop()
