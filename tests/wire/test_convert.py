"""Records through their protobuf messages and back: what a transport carries is what was sent."""

import numpy as np
import pytest

from fedrl.core.moments import Moments
from fedrl.core.normstats import NormStats
from fedrl.wire import convert
from fedrl.wire import fedrl_pb2 as pb
from fedrl.wire.records import Model, Reason, Rejected, Submission, Task, final_reason

LIMIT = 1 << 20


def stats(obs: bool = True) -> NormStats:
    rng = np.random.default_rng(0)
    return NormStats(Moments.of(rng.normal(3, 2, (50, 4))) if obs else None, Moments.of(rng.normal(0, 1, (50, 1))))


@pytest.mark.parametrize("norm", [None, stats(), stats(obs=False)], ids=["none", "obs and returns", "returns only"])
def test_normalisation_statistics_travel_with_tasks_models_and_updates_exactly(norm):
    delta = np.arange(6, dtype=np.float32)
    task = Task(3, 2, 30.0, None, norm)
    model = Model(2, delta, 2, 1.5, norm)
    update = Submission("u1", "dev", 3, 2, delta, 64, {"loss": 0.5}, norm=norm)

    got_task = convert.read_task(convert.task_parts(task), LIMIT)
    got_model = convert.read_model(convert.model_parts(model), LIMIT)
    got_update = convert.read_update(convert.update_parts(update), LIMIT, 6)

    for got in (got_task.norm, got_model.norm, got_update.norm):
        if norm is None:
            assert got is None
            continue
        for name in ("obs", "returns"):
            sent, back = getattr(norm, name), getattr(got, name)
            assert (sent is None) == (back is None)
            if sent is not None:  # float64 on the wire: bit for bit
                assert back.count == sent.count
                assert back.mean.tobytes() == sent.mean.tobytes() and back.m2.tobytes() == sent.m2.tobytes()


def test_statistics_whose_means_and_sums_of_squares_differ_in_length_are_refused():
    message = pb.NormStats(obs=pb.Moments(count=3, mean=[1.0, 2.0], m2=[1.0]))

    with pytest.raises(Rejected, match="norm.obs: 2 means but 1 sums of squared deviations"):
        convert.read_norm(message)


@pytest.mark.parametrize(
    ("name", "final"),
    [("NOT_FOUND", Reason.NOT_FOUND), ("RESOURCE_EXHAUSTED", Reason.RESOURCE_EXHAUSTED), ("UNAVAILABLE", None),
     ("INTERNAL", None)],
)  # fmt: skip
def test_a_refusal_is_final_unless_it_asks_to_try_again_later(name, final):
    assert final_reason(name) is final
