"""The region's side of its parent: one thread that keeps the region in step with the parent.

Over and over: push the update a closed round left to forward (``RegionCoordinator.outbox``), then
say which version the region serves and copy a newer one the parent deployed (``heartbeat``,
``pull``), then, with no round open here, ask the parent for one (``task``): a ``Train`` opens the
parent's round for the region's devices (``arm``), a finished run is passed on (``finish``).
An unreachable parent is retried with backoff and jitter, forever, as a device retries its server;
a refused credential stops the region (``Fatal``), since only a change of its settings helps.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from fedrl.edge.backoff import BackoffConfig, backoff_delay
from fedrl.edge.device import CREDENTIAL_REASONS, Fatal, event, refused_credentials
from fedrl.edge.link import Link, Unreachable, Untrusted
from fedrl.server.region import RegionCoordinator
from fedrl.wire.records import Reason, Rejected, Task

POLL_S = 1.0  # while a round is open here: how often the parent hears from the region
PATIENCE = 10  # pushes refused as "later" (RESOURCE_EXHAUSTED, ALREADY_EXISTS: being stored) before giving up
LATER = (Reason.RESOURCE_EXHAUSTED, Reason.ALREADY_EXISTS)


class Upstream:
    """The thread that connects ``region`` to its parent through ``link``."""

    def __init__(
        self,
        link: Link,
        region: RegionCoordinator,
        stop: threading.Event,
        backoff: BackoffConfig | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.link, self.region, self._stop = link, region, stop
        self._backoff, self._rng = backoff or BackoffConfig(), rng or np.random.default_rng()
        self.fatal: Fatal | None = None  # why the thread stopped the region, if it did
        self._later = 0  # consecutive pushes the parent answered with "later"
        self._heard_at: float | None = None  # time.monotonic() when the parent last answered a whole step

    def run(self) -> None:
        """Keep the region in step with its parent until ``stop`` is set; a refused credential or an
        untrusted parent sets ``fatal`` and ``stop``. Anything else that fails is logged and retried."""
        failures = 0
        while not self._stop.is_set():
            try:
                wait_s = self.step()
                self._heard_at, failures = time.monotonic(), 0
                # an update ready to forward cuts the wait short, except the wait before pushing it again
                (self._stop if self.region.outbox() is not None else self.region.ready).wait(wait_s)
                continue
            except Untrusted as exc:
                self._give_up(Fatal(str(exc)))
                return
            except Rejected as exc:
                if exc.reason in CREDENTIAL_REASONS:
                    self._give_up(refused_credentials(exc))
                    return
                event(logging.WARNING, "parent_refused", reason=exc.reason.value, message=exc.message)
            except Unreachable as exc:
                event(logging.WARNING, "parent_unreachable", attempt=failures + 1, error=str(exc))
            except Exception as exc:  # a bug must not silently end the region's link to its parent
                event(logging.ERROR, "upstream_failed", error=f"{type(exc).__name__}: {exc}")
            self._stop.wait(backoff_delay(self._backoff, failures, self._rng))
            failures += 1

    def step(self) -> float:
        """One pass: forward, follow the deployed version, take a round; returns how long to wait."""
        if self.region.outbox() is not None:
            return self._forward()
        self._follow()
        if self.region.finished or self.region.forwarding:
            return POLL_S
        reply = self.link.task()
        if isinstance(reply, Task):
            if not self.region.has_version(reply.base_version):
                self.region.mirror(self.link.pull(reply.base_version))
            self.region.arm(reply)
            return POLL_S
        if reply.finished:
            self._follow()  # the parent's final version may be newer than the heartbeat above said
            self.region.finish()
        elif self.region.armed:  # the parent has no place for the region in the round open here any more
            self.region.parent_moved_on(f"the parent says: {reply.reason}")
        return POLL_S if self.region.armed else reply.retry_after_s

    def _forward(self) -> float:
        """Push the update to forward; the round closes here once the parent answers for good."""
        submission = self.region.outbox()
        try:
            ack = self.link.push(submission)
        except Rejected as exc:
            if exc.reason in CREDENTIAL_REASONS:
                raise
            if exc.reason in LATER and self._later < PATIENCE:
                self._later += 1
                event(
                    logging.WARNING, "forward_later", attempt=self._later, reason=exc.reason.value, message=exc.message
                )
                return backoff_delay(self._backoff, self._later, self._rng)
            self._later = 0
            self.region.dropped(f"{exc.reason.value}: {exc.message}")
            return 0.0
        self._later = 0
        self.region.forwarded(ack)
        return 0.0

    def _follow(self) -> None:
        """Say which version the region serves; copy the one the parent deploys when it is newer."""
        deployed = self.link.heartbeat(self.region.deployed_version)
        if deployed > self.region.deployed_version:
            self.region.mirror(self.link.pull(deployed))

    def facts(self) -> dict:
        """What the region's ``/healthz`` adds: how long ago its parent last answered (None: not yet).
        A region cut off from its parent stays healthy (its devices act and train on); this says so."""
        heard = self._heard_at
        return {"parent_heard_s_ago": None if heard is None else round(time.monotonic() - heard, 1)}

    def _give_up(self, fatal: Fatal) -> None:
        self.fatal = fatal
        event(logging.ERROR, "region_stopped", error=str(fatal))
        self._stop.set()
