"""A device's link to several servers of a hierarchy: its region first, others when it is gone.

``FailoverLink`` is a ``Link`` over an ordered list of links (the device's region, then another
region or the root). A call goes to the link in use; when it raises ``Unreachable`` the next call
goes to the next link (the agent backs off and calls again, as it always does). After
``return_after_s`` on another link, the next call tries the first one again, so a device goes home
when its region is back. The servers must share the experiment and the version numbers (a region
serves its parent's), and each must know the device's token (``fedrl fleet add-client NAME
--same-token FILE``); a fallback that refuses the device's credentials or certificate is passed
over like an unreachable one (only the first server's refusal stops the device).

The agent trains once per synchronous round: after it has made a round's update it trains for no
other task of that round, wherever it comes from (``fedrl.edge.agent``), so a round is not counted
twice when a region that stored an update (whose answer may have been lost) forwards it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from fedrl.edge.device import CREDENTIAL_REASONS
from fedrl.edge.link import Link, Unreachable, Untrusted
from fedrl.wire.records import Ack, Model, Registration, Rejected, SecureReply, SecureStep, Submission, Task, Wait

T = TypeVar("T")


class FailoverLink:
    """``Link`` over ``links`` in order of preference; see the module docstring."""

    def __init__(
        self, links: Sequence[Link], return_after_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ):
        if not links:
            raise ValueError("a failover link needs at least one link")
        self.links, self.return_after_s, self._clock = list(links), return_after_s, clock
        self._lock = threading.Lock()  # the heartbeat thread and the agent's loop call at once
        self._current, self._left_home_at = 0, 0.0

    @property
    def current(self) -> int:
        """The index of the link calls go to now."""
        with self._lock:
            return self._current

    def _link(self) -> tuple[int, Link]:
        with self._lock:
            if self._current and self._clock() - self._left_home_at >= self.return_after_s:
                self._current = 0
            return self._current, self.links[self._current]

    def _call(self, call: Callable[[Link], T]) -> T:
        index, link = self._link()
        try:
            return call(link)
        except Unreachable as exc:
            self._move_on(index)
            raise Unreachable(f"server {index + 1} of {len(self.links)}: {exc}") from None
        except (Rejected, Untrusted) as exc:
            # the device's own server decides about its credentials; a fallback that refuses them was
            # set up wrong (the token not enrolled there: --same-token), which must not stop the device
            if index == 0 or (isinstance(exc, Rejected) and exc.reason not in CREDENTIAL_REASONS):
                raise
            self._move_on(index)
            raise Unreachable(
                f"server {index + 1} of {len(self.links)} refused this device, check its set-up: {exc}"
            ) from None

    def _move_on(self, index: int) -> None:
        """Send the next call to the server after ``index`` (unless another thread moved on already)."""
        with self._lock:
            if self._current == index:
                self._current = (index + 1) % len(self.links)
                if index == 0:
                    self._left_home_at = self._clock()

    def register(self) -> Registration:
        """Announce this client to the server in use."""
        return self._call(lambda link: link.register())

    def heartbeat(self, acting_version: int | None) -> int:
        """Report liveness to the server in use; returns its deployed version."""
        return self._call(lambda link: link.heartbeat(acting_version))

    def task(self) -> Task | Wait:
        """Ask the server in use what to do."""
        return self._call(lambda link: link.task())

    def pull(self, version: int) -> Model:
        """Download a version from the server in use (every server of a hierarchy numbers them alike)."""
        return self._call(lambda link: link.pull(version))

    def push(self, submission: Submission) -> Ack:
        """Upload an update to the server in use."""
        return self._call(lambda link: link.push(submission))

    def secure(self, round_: int, step: SecureStep, payload: bytes) -> SecureReply:
        """One step of a secure-aggregation round with the server in use."""
        return self._call(lambda link: link.secure(round_, step, payload))

    def close(self) -> None:
        """Close every link."""
        for link in self.links:
            link.close()
