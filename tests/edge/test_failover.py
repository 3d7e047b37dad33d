"""A device's link to its region, with the root (or another region) while the region is gone."""

import threading

import numpy as np
import pytest

from fedrl.edge.failover import FailoverLink
from fedrl.edge.link import Unreachable
from fedrl.wire.records import Ack, Reason, Rejected, Submission, Task


class Server:
    """A link double that answers with its name, or is down."""

    def __init__(self, name):
        self.name, self.down, self.closed = name, False, False

    def heartbeat(self, acting_version):
        if self.down:
            raise Unreachable(f"{self.name}: UNAVAILABLE")
        return self.name

    def task(self):
        self.heartbeat(None)
        return Task(1, 0, 60.0)

    def push(self, submission):
        self.heartbeat(None)
        return Ack(submission.update_id, submission.round, 0.0)

    def secure(self, round_, step, payload):
        self.heartbeat(None)

    def close(self):
        self.closed = True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_calls_go_to_the_next_server_while_one_is_down_and_home_again_after_a_while():
    region, root, clock = Server("region"), Server("root"), Clock()
    link = FailoverLink([region, root], return_after_s=60.0, clock=clock)
    assert link.heartbeat(0) == "region"

    region.down = True
    with pytest.raises(Unreachable, match="server 1 of 2: region: UNAVAILABLE"):
        link.heartbeat(0)
    assert link.heartbeat(0) == "root" and link.current == 1

    region.down = False
    clock.now = 59.0
    link.task()
    assert link.current == 1  # not yet
    clock.now = 60.0
    assert link.heartbeat(0) == "root"  # only a request for work goes home
    link.task()
    assert link.current == 0 and link.heartbeat(0) == "region"


def test_an_update_goes_to_the_server_whose_task_it_was_and_to_no_other():
    region, root, clock = Server("region"), Server("root"), Clock()
    link = FailoverLink([region, root], return_after_s=10.0, clock=clock)
    task = link.task()
    update = Submission("u", "dev", task.round, 0, np.zeros(2, np.float32), 10)
    region.down = True
    with pytest.raises(Unreachable):  # the heartbeat thread notices first and moves on to the root
        link.heartbeat(0)

    with pytest.raises(Unreachable, match="server 1 of 2"):  # the region that gave the task, not the root
        link.push(update)
    clock.now = 9.0
    with pytest.raises(Unreachable, match="server 1 of 2"):
        link.secure(task.round, None, b"")
    clock.now = 10.0  # gone for too long: dropped, not sent where it may be counted twice
    with pytest.raises(Rejected, match="whose task round 1 was, has been unreachable for 10 s"):
        link.push(update)
    with pytest.raises(Rejected, match="SecureStep"):
        link.secure(task.round, None, b"")

    # a restarted device says where its pending update's task came from
    fresh = FailoverLink([Server("region"), Server("root")], clock=clock)
    fresh.expect(1, 1)
    assert fresh.server_of(1) == 1 and fresh.push(update).update_id == "u"


def test_with_every_server_down_the_calls_go_round_and_the_agent_keeps_backing_off():
    servers = [Server("a"), Server("b"), Server("c")]
    for s in servers:
        s.down = True
    link = FailoverLink(servers, clock=Clock())
    tried = []
    for _ in range(4):
        with pytest.raises(Unreachable) as failed:
            link.heartbeat(0)
        tried.append(str(failed.value).split(":")[0])
    assert tried == ["server 1 of 3", "server 2 of 3", "server 3 of 3", "server 1 of 3"]


def test_two_threads_failing_at_once_move_on_one_server_not_two():
    region, spare, root = Server("region"), Server("spare"), Server("root")
    link = FailoverLink([region, spare, root], clock=Clock())
    region.down = True
    barrier = threading.Barrier(2)
    original = region.heartbeat

    def both_inside(acting_version):
        barrier.wait(5)  # the heartbeat thread and the agent's loop both call the dead region
        return original(acting_version)

    region.heartbeat = both_inside
    failed = []

    def call():
        try:
            link.heartbeat(0)
        except Unreachable:
            failed.append(True)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert failed == [True, True]
    assert link.current == 1 and link.heartbeat(0) == "spare"


def test_closing_closes_every_link_and_none_is_refused():
    servers = [Server("a"), Server("b")]
    FailoverLink(servers).close()
    assert all(s.closed for s in servers)
    with pytest.raises(ValueError, match="at least one link"):
        FailoverLink([])


class Refusing(Server):
    """A server that refuses the device's credentials."""

    def heartbeat(self, acting_version):
        raise Rejected(Reason.UNAUTHENTICATED, "unknown token")


def test_a_fallback_that_refuses_the_device_is_passed_over_but_its_own_servers_refusal_stands():
    region, root = Server("region"), Refusing("root")
    link = FailoverLink([region, root], clock=Clock())
    region.down = True
    with pytest.raises(Unreachable):
        link.heartbeat(0)
    with pytest.raises(Unreachable, match="server 2 of 2 refused this device, check its set-up: .*unknown token"):
        link.heartbeat(0)
    region.down = False
    assert link.heartbeat(0) == "region"

    with pytest.raises(Rejected, match="unknown token"):
        FailoverLink([Refusing("region"), Server("root")]).heartbeat(0)


def test_the_last_try_reaches_a_server_back_in_time_and_an_answer_starts_the_wait_over():
    region, root, clock = Server("region"), Server("root"), Clock()
    link = FailoverLink([region, root], return_after_s=60.0, clock=clock)
    update = Submission("u", "dev", link.task().round, 0, np.zeros(2, np.float32), 10)
    region.down = True
    with pytest.raises(Unreachable):
        link.push(update)

    region.down = False
    clock.now = 61.0  # the agent's backoff brought the next try late: it is made, and succeeds
    assert link.push(update).update_id == "u"

    busy = Server("region")
    busy.push = lambda s: (_ for _ in ()).throw(Rejected(Reason.RESOURCE_EXHAUSTED, "slow down"))
    link = FailoverLink([busy, root], return_after_s=60.0, clock=clock)
    link.task()
    busy.down = True
    with pytest.raises(Unreachable):
        link.heartbeat(0)
    clock.now = 70.0
    busy.down = False
    with pytest.raises(Rejected, match="slow down"):  # an answer: the region is there
        link.push(update)
    clock.now = 200.0
    with pytest.raises(Rejected, match="slow down"):  # still answering, never refused here as unreachable
        link.push(update)


def test_a_server_index_this_link_does_not_have_is_ignored():
    link = FailoverLink([Server("region")])
    link.expect(1, 2)
    assert link.server_of(1) is None
