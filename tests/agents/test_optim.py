"""fedrl's flat Adam and RMSprop take exactly torch.optim's steps (bit for bit), without importing
torch._dynamo, which torch.optim does (about 0.8 s of every process's first round)."""

import subprocess
import sys

import pytest
import torch

from fedrl.agents.optim import FlatAdam, FlatRMSprop


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda p: FlatAdam(p, lr=3e-3, eps=1e-5), lambda p: torch.optim.Adam([p], lr=3e-3, eps=1e-5)),
        (
            lambda p: FlatRMSprop(p, lr=7e-4, alpha=0.99, eps=1e-5),
            lambda p: torch.optim.RMSprop([p], lr=7e-4, alpha=0.99, eps=1e-5),
        ),
    ],
    ids=["adam", "rmsprop"],
)
def test_the_flat_optimisers_take_torchs_steps_to_the_bit(ours, theirs):
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(6, 40, generator=gen)
    targets = [torch.randn(6, 40, generator=gen) for _ in range(30)]
    mine, reference = start.clone().requires_grad_(), start.clone().requires_grad_()
    optimisers = (ours(mine), theirs(reference))

    for target in targets:
        for flat, optimiser in zip((mine, reference), optimisers):
            optimiser.zero_grad(set_to_none=False)
            (torch.tanh(flat) * target).sum().backward()
            optimiser.step()

    assert torch.equal(mine, reference)


def test_training_imports_no_torch_dynamo(tiny_config, tmp_path):
    code = (
        "import sys\n"
        "from fedrl.experiment.loading import parse_config\n"
        "from fedrl.sim import run as runs\n"
        f"current = runs.start(parse_config({tiny_config!r}), sys.argv[1])\n"
        "for _ in current.rounds(tensorboard=False):\n"
        "    pass\n"
        "print('torch._dynamo' in sys.modules)\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
