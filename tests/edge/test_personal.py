"""A device's personal copy of the deployed version: fine-tuned on its own experience, compared with
the global version on its own episodes, kept only while it does not do worse."""

import pytest

from fedrl.edge.personal import Personalization

from .test_agent import Running, ScriptedLink, agent, eventually


@pytest.mark.parametrize(
    ("tolerance", "decision", "personal"),
    [(1e9, "personal_kept", True), (-1e9, "personal_fallback", False)],
    ids=["kept", "fallback"],
)
def test_the_device_keeps_its_personal_copy_only_while_it_does_not_do_worse(
    experiment, params, tmp_path, edge_log, tolerance, decision, personal
):
    # Prepare: a server with nothing to do but a deployed version
    link = ScriptedLink(experiment, {0: params})
    link.waiting = True
    config = Personalization(steps=256, episodes=2, tolerance=tolerance)

    # Execute
    running = Running(agent(link, tmp_path, personalization=config, until_finished=False))
    eventually(lambda: edge_log.events(decision), timeout=60)

    # Assert: both sides were measured; what acts afterwards is the decision's
    (tuned,) = edge_log.events("personal_tuned")
    assert tuned.fields == {"version": 0, "env_steps": 256}
    (made,) = edge_log.events(decision)
    assert {"personal_return", "global_return"} <= set(made.fields)
    acting = running.agent.acting.current
    assert acting.personal is personal and acting.version == 0 and not acting.greedy
    assert link.pushed == []  # a personal copy is never sent
    running.stop()
    running.thread.join(10)
    assert running.error is None


def test_a_task_during_the_comparison_learns_from_the_global_version_and_the_comparison_goes_on(
    experiment, params, tmp_path, edge_log
):
    import logging

    from fedrl.wire.records import Task

    link = ScriptedLink(experiment, {0: params}, tasks=[])
    link.waiting = True

    class AskWhenTuned(logging.Handler):
        """The server asks for an update the moment the copy is tuned: before the comparison ends."""

        def emit(self, record):
            if record.getMessage() == "personal_tuned":
                link.tasks.append(Task(1, 0, 60.0))

    asking = AskWhenTuned()
    logging.getLogger("fedrl.edge").addHandler(asking)
    try:
        config = Personalization(steps=256, episodes=3, tolerance=1e9)
        running = Running(agent(link, tmp_path, personalization=config, until_finished=False))
        eventually(lambda: len(link.pushed) == 1, timeout=60)
        eventually(lambda: edge_log.events("personal_kept"), timeout=60)
        eventually(lambda: running.agent.acting.current.personal, timeout=10)
    finally:
        logging.getLogger("fedrl.edge").removeHandler(asking)

    names = [r.getMessage() for r in edge_log.records]
    assert names.index("personal_tuned") < names.index("trained") < names.index("personal_kept")
    assert link.pushed[0].env_steps == 128 and link.pushed[0].base_version == 0
    running.stop()
    running.thread.join(10)
    assert running.error is None


def test_a_device_keeping_its_statistics_under_dp_tunes_its_personal_copy(experiment, params, tmp_path, edge_log):
    import yaml

    from fedrl.agents.normalize import NormalizeConfig, init_stats
    from fedrl.wire.records import Model

    # Prepare: personal statistics under local DP (they never leave the device); the version carries
    # the server's statistics, empty
    data = yaml.safe_load(experiment)
    data["learner"] = {**data["learner"], "normalize": {"obs": True, "stats": "personal"}}
    data["pipeline"] = {"clip_norm": 1.0, "dp": {"mode": "local", "noise_multiplier": 0.1}}
    empty = init_stats(NormalizeConfig(obs=True), 4)

    class Link(ScriptedLink):
        def pull(self, version):
            self._answer("pull")
            return Model(version, self.models[version], version, None, empty)

    link = Link(yaml.safe_dump(data), {0: params})
    link.waiting = True

    # Execute
    running = Running(agent(link, tmp_path, personalization=Personalization(steps=256, episodes=2)))
    eventually(lambda: edge_log.events("personal_tuned"), timeout=60)

    # Assert: the copy was tuned (with the device's own statistics) and the agent runs on
    assert running.error is None and running.thread.is_alive()
    running.stop()
    running.thread.join(10)
    assert running.error is None
