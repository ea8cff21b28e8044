"""Liveness of the worker: the first internal service, agent or timer that dies makes it
unhealthy, and the process exits non-zero shortly after, so that an orchestrator restarts it.

A service that dies inside a worker otherwise leaves the process running and every later event
waiting. Crashes are caught through mode's own supervision hook (`Service.crash` wakes the
service's supervisor): the ingest, the follower and the Faust app are put under a
`ReportingSupervisor`, and Faust agents get one through the `agent_supervisor` setting. A timer
that raises crashes the app, so it is covered by the app's supervisor.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from mode import OneForOneSupervisor
from mode.types import ServiceT

log = logging.getLogger(__name__)

#: Exit status of a worker stopped because one of its services died (BSD EX_SOFTWARE).
EXIT_SERVICE_DIED = 70
#: Seconds between the failure and the shutdown: long enough for a probe or a scrape to read
#: the reason from /healthz, short enough that events do not wait long for the restart.
EXIT_DELAY_SECONDS = 5.0
#: Seconds the orderly shutdown may take before the process is ended without it.
STOP_TIMEOUT_SECONDS = 30.0


class Health:
    """The worker's liveness: the first fatal failure, kept with its reason."""

    def __init__(self, exit_delay: float = EXIT_DELAY_SECONDS,
                 stop_timeout: float = STOP_TIMEOUT_SECONDS,
                 stop: Callable[[], None] | None = None,
                 hard_exit: Callable[[int], None] = os._exit) -> None:
        self.exit_delay = exit_delay
        self.stop_timeout = stop_timeout
        self.reason: str | None = None
        self.failed_at: float | None = None
        # How to stop the process: an orderly stop (SIGTERM to ourselves, handled by the Faust
        # worker) unless the caller gives another; `hard_exit` ends it if that hangs.
        self._stop = stop or _sigterm_self
        self._hard_exit = hard_exit
        self._exit_scheduled = False

    @property
    def live(self) -> bool:
        return self.reason is None

    def fail(self, source: str, exc: BaseException | None) -> None:
        """Mark the worker dead (the first failure wins) and schedule the exit."""
        if self.reason is not None:
            log.error("%s died as well: %r", source, exc)
            return
        what = "stopped" if exc is None else f"{type(exc).__name__}: {exc}"
        self.reason = f"{source} died: {what}"
        self.failed_at = time.time()
        # One line: mode has logged the traceback when the service crashed.
        log.critical("worker unhealthy, exiting with status %d in %.0f s: %s",
                     EXIT_SERVICE_DIED, self.exit_delay, self.reason)
        self._schedule_exit()

    def _schedule_exit(self) -> None:
        if self._exit_scheduled:
            return
        self._exit_scheduled = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test, or a failure outside the worker): stop now
            self._exit_now()
            return
        loop.call_later(self.exit_delay, self._exit_now)

    def _exit_now(self) -> None:
        # A backstop in a thread of its own: an orderly shutdown that hangs (a consumer that
        # never leaves its group) must not keep a dead worker running.
        timer = threading.Timer(self.stop_timeout, self._hard_exit, args=(EXIT_SERVICE_DIED,))
        timer.daemon = True
        timer.start()
        self._stop()

    def exit_code(self, code: int) -> int:
        """The process's exit status: EXIT_SERVICE_DIED after a failure, else `code`."""
        return EXIT_SERVICE_DIED if self.reason is not None else code

    def supervisor(self, *services: ServiceT, **kwargs: Any) -> ReportingSupervisor:
        """A supervisor that reports any of `services` dying to this health."""
        sup = ReportingSupervisor(**kwargs)
        sup.health = self
        sup.add(*services)
        return sup

    def agent_supervisor(self) -> type[ReportingSupervisor]:
        """A supervisor class for Faust's `agent_supervisor` setting, bound to this health."""
        return type("AgentReportingSupervisor", (ReportingSupervisor,), {"health": self})

    def supervise(self, app: Any, *services: ServiceT) -> ReportingSupervisor:
        """Watch the Faust app, its agents and `services` (started by the supervisor's start).

        The app is not started by it (it is running when the supervisor starts) and nothing is
        stopped by it: a crash of the app is how Faust reports a timer or a rebalance callback
        that raised. The supervisor must not be a child of the app: an app crash marks its
        children crashed too, and a crashed supervisor reports nothing.
        """
        app.conf.agent_supervisor = self.agent_supervisor()
        return self.supervisor(*services, app)


class ReportingSupervisor(OneForOneSupervisor):
    """Restarts nothing that died of an error: the worker is marked dead and exits instead.

    Faust cancels an agent's actor on a rebalance and has its supervisor start a new one; that
    is not a failure, and such actors are restarted as mode's OneForOneSupervisor does.
    """

    health: Health

    def __init__(self, *services: ServiceT, **kwargs: Any) -> None:
        self._reported: set[ServiceT] = set()
        super().__init__(*services, **kwargs)

    async def restart_services(self, services: list[ServiceT]) -> None:
        reported = self._reported
        for service in services:
            reason = service.crash_reason
            if isinstance(reason, asyncio.CancelledError):
                if self.health.live:  # else the worker is on its way out: leave it
                    await self.restart_service(service)
            elif service not in reported:  # the loop finds a dead service again every 5 s
                reported.add(service)
                self.health.fail(service_name(service), reason)

    async def on_stop(self) -> None:
        # Leave the services to their owners' on_stop, in the order those choose.
        return None


def service_name(service: Any) -> str:
    """A short name for reasons: the agent's name for a Faust actor, else the service's."""
    agent = getattr(service, "agent", None)
    if agent is not None and getattr(agent, "name", None):
        return f"agent {agent.name}"
    return getattr(service, "shortlabel", None) or type(service).__name__


def readiness(service: Any) -> list[str]:
    """What the worker still waits for before it serves (empty when ready)."""
    waiting = []
    if not service.ingest.ready:
        waiting.append("ingest not in its group yet")
    if service.app.rebalancing:
        waiting.append("rebalancing")
    if not service.app.tables.recovery.completed.is_set():
        waiting.append("table recovery not complete")
    return waiting


def _sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


__all__ = ["EXIT_SERVICE_DIED", "Health", "ReportingSupervisor", "readiness", "service_name"]
