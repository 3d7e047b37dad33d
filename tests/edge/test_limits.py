"""What a device's owner allows: training threads, a nice training thread, a memory ceiling, a hook
that says when training may run, and triggers for when the device asks for work."""

import os
import threading

import pytest

from fedrl.edge.agent import Fatal
from fedrl.edge.limits import OwnerLimits, Triggers, nice_this_thread, rss_mb
from fedrl.wire.records import Task

from .test_agent import Running, ScriptedLink, agent, eventually


def test_a_nice_training_thread_leaves_the_other_threads_priority_alone():
    seen = {}

    def train():
        nice_this_thread(5)
        seen["trainer"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    worker = threading.Thread(target=train)
    worker.start()
    worker.join()

    assert seen["trainer"] == before + 5
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_triggers_hold_after_steps_or_episodes_or_when_the_return_crosses_a_threshold():
    assert Triggers().hold(0, 0, None)  # none set: always
    steps = Triggers(after_steps=100)
    assert not steps.hold(99, 5, -1.0) and steps.hold(100, 0, None)
    either = Triggers(after_episodes=3, below_return=10.0)
    assert not either.hold(10**6, 2, 50.0)
    assert either.hold(0, 3, None) and either.hold(0, 0, 9.5)
    assert Triggers(above_return=100.0).hold(0, 0, 101.0)


def test_training_waits_for_the_owners_hook_and_acting_goes_on(experiment, params, tmp_path, edge_log):
    # Prepare: a hook in the device's folder that says "not now" until a file appears
    (tmp_path / "owner.py").write_text(
        f"from pathlib import Path\n\ndef charging():\n    return Path({str(tmp_path / 'charging')!r}).exists()\n"
    )
    link = ScriptedLink(experiment, {0: params}, tasks=[Task(1, 0, 60.0)])
    limits = OwnerLimits(threads=1, nice=3, train_when="owner:charging", hook_dir=tmp_path)
    running = Running(agent(link, tmp_path / "state", limits=limits))

    # Execute: the device has its experience, but the hook says no
    eventually(lambda: edge_log.events("training_deferred"))
    steps = running.agent.actor.steps
    eventually(lambda: running.agent.actor.steps > steps + 500)
    assert link.pushed == []
    (thread,) = edge_log.events("training_thread")
    assert thread.fields == {"torch_threads": 1, "nice_added": 3}
    (tmp_path / "charging").write_text("yes")

    # Assert: it trains and pushes once the hook agrees, then finishes
    running.thread.join(30)
    assert running.error is None and len(link.pushed) == 1


def test_a_task_is_skipped_while_memory_is_over_the_owners_ceiling(experiment, params, tmp_path, edge_log):
    link = ScriptedLink(experiment, {0: params}, tasks=[Task(1, 0, 60.0)])

    agent(link, tmp_path, limits=OwnerLimits(max_rss_mb=1.0)).run()

    (over,) = edge_log.events("over_memory_budget")
    assert over.fields["rss_mb"] > 1.0 and link.pushed == []
    assert rss_mb() > 1.0


def test_a_hook_that_cannot_be_loaded_stops_the_device_with_its_name(experiment, tmp_path):
    with pytest.raises(Fatal, match="--train-when nowhere:charging: cannot load it"):
        agent(ScriptedLink(experiment, {}), tmp_path, limits=OwnerLimits(train_when="nowhere:charging")).run()


def test_the_device_asks_for_work_only_when_its_triggers_hold(experiment, params, tmp_path):
    link = ScriptedLink(experiment, {0: params}, tasks=[Task(1, 0, 60.0)])
    link.waiting = True
    running = Running(agent(link, tmp_path, triggers=Triggers(after_episodes=40), until_finished=False))

    eventually(lambda: running.agent.actor is not None and running.agent.actor.episodes >= 5)
    assert "task" not in link.calls  # acting, but not yet allowed to ask
    eventually(lambda: len(link.pushed) == 1, timeout=60)
    assert running.agent.actor.episodes >= 40
    running.stop()
    running.thread.join(10)
