"""The deployed policy against the hand-written bang-bang controller, in each room of run.sh.

    python examples/edge/compare.py SERVER_STATE_DIR ROOM_KWARGS_JSON...

Loads the server's deployed version with `fedrl.load_policy` (numpy only) and plays 20 days per
room with each controller, the same days (seeds) for all. Bang-bang is shown with its default
band and with the best band of a grid, tuned on the same days: the strongest hand baseline.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from thermostat import bang_bang, make_env

import fedrl

DAYS = 20
BANDS_C = (0.05, 0.1, 0.25, 0.5, 1.0)


def day_returns(env, controller) -> np.ndarray:
    """Return of each of ``DAYS`` days played by ``controller(obs) -> action``."""
    returns = []
    for seed in range(DAYS):
        obs, _ = env.reset(seed=1000 + seed)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(controller(obs))
            total, done = total + reward, terminated or truncated
        returns.append(total)
    return np.array(returns)


def main(state_dir: str, rooms: list[str]) -> None:
    """Print one line per room: learned vs bang-bang mean daily return."""
    policy = fedrl.load_policy(Path(state_dir))
    print(f"deployed version {policy.version} against bang-bang, mean return over {DAYS} days (higher is better)")
    for i, room in enumerate(rooms):
        env = make_env(**json.loads(room))
        learned = day_returns(env, policy.predict).mean()
        hand = {band: day_returns(env, lambda obs, band=band: bang_bang(obs, band)).mean() for band in BANDS_C}
        best = max(hand, key=hand.get)
        print(
            f"room{i}: learned {learned:7.2f}   bang-bang {hand[0.5]:7.2f} (band 0.5 C), "
            f"{hand[best]:7.2f} (best band, {best} C)   {room}"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main(sys.argv[1], sys.argv[2:])
