"""A device's link to several servers of a hierarchy: its region first, others when it is gone.

``FailoverLink`` is a ``Link`` over an ordered list of links (the device's region, then another
region or the root). A call goes to the link in use; when it raises ``Unreachable`` the next call
goes to the next link (the agent backs off and calls again, as it always does). After
``return_after_s`` on another link, the next request for work tries the first one again, so a device
goes home when its region is back (only a request for work goes home, so the calls that follow an
answer, such as the final heartbeat after "finished", reach the server that gave it). An update (and
a secure round's step) goes to the server whose task it was and to no other, which would refuse it
or, had the first stored it though its answer was lost, count it twice: it is retried there while
that server is unreachable, and dropped after ``return_after_s`` of that. The servers must share the experiment
and the version numbers (a region serves its parent's), and each must know the device's token
(``fedrl fleet add-client NAME --same-token FILE``); a fallback that refuses the device's
credentials or certificate is passed over like an unreachable one (only the first server's refusal
stops the device).

Through a ``FailoverLink`` the agent trains once per synchronous round: after it has made a round's
update it trains for no other task of that round, wherever it comes from, and it keeps which server
gave that task across restarts (``fedrl.edge.agent``), so a round is not counted twice when a region
that stored an update (whose answer may have been lost) forwards it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from fedrl.edge.device import CREDENTIAL_REASONS
from fedrl.edge.link import Link, Unreachable, Untrusted
from fedrl.wire.records import (
    Ack,
    Model,
    Reason,
    Registration,
    Rejected,
    SecureReply,
    SecureStep,
    Submission,
    Task,
    Wait,
)

T = TypeVar("T")
KEPT_ROUNDS = 4  # the newest rounds whose server is remembered


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
        self._tasked: dict[int, int] = {}  # round -> the link whose task it was (its update goes there)
        self._pinned_since: dict[int, float] = {}  # round -> when pushing to that link first failed

    @property
    def current(self) -> int:
        """The index of the link calls go to now."""
        with self._lock:
            return self._current

    def _link(self, may_go_home: bool = False) -> tuple[int, Link]:
        """The link in use (``may_go_home``: the first one again, after ``return_after_s`` away)."""
        with self._lock:
            if may_go_home and self._current and self._clock() - self._left_home_at >= self.return_after_s:
                self._current = 0
            return self._current, self.links[self._current]

    def _call(self, call: Callable[[Link], T], index: int | None = None, move_on: bool = True) -> T:
        """``call`` on link ``index`` (the one in use for None); an unreachable one sends the next
        call to the next link, unless ``move_on`` is False."""
        if index is None:
            index = self._link()[0]
        try:
            return call(self.links[index])
        except Unreachable as exc:
            if move_on:
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

    def server_of(self, round_: int) -> int | None:
        """The index of the server whose task for ``round_`` this device took, if it is known."""
        with self._lock:
            return self._tasked.get(round_)

    def expect(self, round_: int, index: int) -> None:
        """Note that the task for ``round_`` came from server ``index`` (the agent restores it after a
        restart, so a pending update still goes where its task came from); an index this link does not
        have (a fallback removed since) is ignored."""
        if 0 <= index < len(self.links):
            with self._lock:
                self._tasked[round_] = index

    def _pinned(self, round_: int, name: str, call: Callable[[Link], T]) -> T:
        """``call`` on the server whose task ``round_`` was (the first when that is not known): never
        another one, which would refuse it or, had the first stored it, count it twice. While that server
        is unreachable the caller retries; a call that finds it unreachable ``return_after_s`` after it
        first did is refused here. Any answer from it starts that time over."""
        with self._lock:
            index = self._tasked.get(round_, 0)
        try:
            answer = self._call(call, index, move_on=False)
        except Unreachable:
            with self._lock:
                since = self._pinned_since.setdefault(round_, self._clock())
            if self._clock() - since < self.return_after_s:
                raise
            raise Rejected(
                Reason.FAILED_PRECONDITION,
                f"{name}: server {index + 1} of {len(self.links)}, whose task round {round_} was, has been "
                f"unreachable for {self.return_after_s:g} s; no other server may take what belongs to it",
            ) from None
        except Rejected:
            with self._lock:
                self._pinned_since.pop(round_, None)
            raise
        with self._lock:
            self._pinned_since.pop(round_, None)
        return answer

    def register(self) -> Registration:
        """Announce this client to the server in use."""
        return self._call(lambda link: link.register())

    def heartbeat(self, acting_version: int | None) -> int:
        """Report liveness to the server in use; returns its deployed version."""
        return self._call(lambda link: link.heartbeat(acting_version))

    def task(self) -> Task | Wait:
        """Ask the server in use what to do (back home first, once ``return_after_s`` has passed)."""
        index = self._link(may_go_home=True)[0]
        reply = self._call(lambda link: link.task(), index)
        if isinstance(reply, Task):
            with self._lock:
                self._tasked = {r: i for r, i in self._tasked.items() if r > reply.round - KEPT_ROUNDS} | {
                    reply.round: index
                }
                self._pinned_since = {r: t for r, t in self._pinned_since.items() if r in self._tasked}
                self._pinned_since.pop(reply.round, None)
        return reply

    def pull(self, version: int) -> Model:
        """Download a version from the server in use (every server of a hierarchy numbers them alike)."""
        return self._call(lambda link: link.pull(version))

    def push(self, submission: Submission) -> Ack:
        """Upload an update to the server whose task it was (which may have stored it already, though
        its answer was lost); ``Rejected`` once that server has been unreachable for ``return_after_s``."""
        return self._pinned(submission.round, "PushUpdate", lambda link: link.push(submission))

    def secure(self, round_: int, step: SecureStep, payload: bytes) -> SecureReply:
        """One step of a secure-aggregation round with the server whose task it is (its protocol is
        there); ``Rejected`` once that server has been unreachable for ``return_after_s``."""
        return self._pinned(round_, "SecureStep", lambda link: link.secure(round_, step, payload))

    def close(self) -> None:
        """Close every link."""
        for link in self.links:
            link.close()
