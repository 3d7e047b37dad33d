"""A device's personal copy of each deployed version, kept only while it does better here.

With ``personal_steps`` set, after each newly deployed version has acted for that many steps the
device fine-tunes a copy of it on that experience (the learner's own round, not sent), then
compares the two on its own environment: a few greedy episodes with the global version, then as
many with the personal copy. It keeps the copy unless its mean return is more than ``tolerance``
below the global version's, and falls back to the global version otherwise (``personal_kept`` /
``personal_fallback`` in the log, with both returns); while the copy acts, every further batch of
as many episodes is judged the same way, and a drop falls back too. A task from the server
interrupts (the device collects the task's experience with the global version), and the phase
starts again after it. The copy and its phase live in memory: after a reboot the device acts with
the global version until the next one is deployed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from fedrl.core.normstats import NormStats
from fedrl.edge.acting import ActingPolicy, Policy
from fedrl.edge.actor import Actor
from fedrl.edge.device import event
from fedrl.edge.recorder import Recorder
from fedrl.edge.trainer import EdgeTrainer, LocalState, LocalUpdate


@dataclass(frozen=True)
class Personalization:
    """How a device personalises (``steps`` 0: it does not)."""

    steps: int = 0  # transitions of a new version to fine-tune its personal copy on
    episodes: int = 5  # greedy episodes each side of the comparison
    tolerance: float = 0.0  # return the personal copy may lose against the global version and still act


class Personalizer:
    """Runs the fine-tune-then-compare cycle for each deployed version (see the module docstring)."""

    def __init__(
        self,
        config: Personalization,
        trainer: EdgeTrainer,
        recorder: Recorder,
        actor: Actor,
        acting: ActingPolicy,
        train: Callable[..., tuple[LocalUpdate, LocalState]],
    ) -> None:
        """``train`` runs ``trainer.train`` (in the device's training thread, on the owner's budget)."""
        self.config, self.trainer, self.recorder, self.actor, self.acting = config, trainer, recorder, actor, acting
        self._train = train
        self._global: Policy | None = None
        self._params: np.ndarray | None = None  # the global version's parameters
        self._norm: NormStats | None = None  # the global version's normalisation statistics
        self._personal: Policy | None = None
        self._phase = "idle"  # collect -> global -> personal -> done
        self._expected: Policy | None = None  # what acts during the phase
        self._mark = 0  # the acting loop's episode count when the phase's policy began
        self._global_return = 0.0

    def restart(self, policy: Policy, params: np.ndarray, norm: NormStats | None = None) -> None:
        """A new global version (normalising with ``norm``) acts: collect its experience for a personal copy."""
        self._global, self._params, self._norm, self._personal = policy, params, norm, None
        self._phase, self._expected = "collect", policy

    def advance(self, local: LocalState) -> None:
        """Move the cycle on as far as the acting loop's progress allows (the agent's thread)."""
        if self._phase == "collect":
            self._fine_tune(local)
        elif self._phase != "idle" and self.acting.current is not self._expected:
            self._act(self._expected)  # a task took over acting: start the phase again
        elif self.actor.episodes >= self._mark + 1 + self.config.episodes:  # the first may be partial
            if self._phase in ("global", "personal"):
                self._compare()
            elif self._phase == "done" and self._expected is self._personal:
                self._watch()

    def resume(self) -> None:
        """After a task: act again with what the cycle had acting."""
        if self._phase != "idle" and self._expected is not None and self.acting.current is not self._expected:
            self._act(self._expected)

    def _fine_tune(self, local: LocalState) -> None:
        steps, _ = self.recorder.fresh(self._global.tag)
        if steps < self.config.steps:
            return
        experience, _ = self.recorder.take(self._global.tag, self.config.steps)  # a look: tasks may learn from it too
        version = self._global.version
        update, tuned = self._train(local, self._params, version, experience, None, self._norm)
        kept = self._norm is None or update.norm is None  # no statistics, or personal ones it keeps itself
        norm = self._norm if kept else self._norm.merge(update.norm)  # what the copy was tuned with
        personal = self.trainer.policy(version, self._params + update.delta, tuned, time.time(), norm)
        self._personal = replace(personal, personal=True)
        event(logging.INFO, "personal_tuned", version=version, env_steps=update.env_steps)
        self._phase = "global"
        self._act(replace(self._global, greedy=True))

    def _compare(self) -> None:
        recent = float(np.mean(list(self.actor.returns)[-self.config.episodes :]))
        if self._phase == "global":
            self._global_return, self._phase = recent, "personal"
            self._act(replace(self._personal, greedy=True))
            return
        keep = recent >= self._global_return - self.config.tolerance
        self._phase = "done"
        self._act(self._personal if keep else self._global)  # before the log line: who reads it sees the result
        event(
            logging.INFO,
            "personal_kept" if keep else "personal_fallback",
            version=self._global.version,
            personal_return=recent,
            global_return=self._global_return,
        )

    def _watch(self) -> None:
        """While the personal copy acts: fall back when its latest episodes do worse than the
        global version did, by more than the tolerance."""
        recent = float(np.mean(list(self.actor.returns)[-self.config.episodes :]))
        if recent < self._global_return - self.config.tolerance:
            self._act(self._global)
            event(
                logging.INFO,
                "personal_fallback",
                version=self._global.version,
                personal_return=recent,
                global_return=self._global_return,
                reason="its return dropped while it acted",
            )
        else:
            self._mark = self.actor.episodes  # judge the next episodes afresh

    def _act(self, policy: Policy) -> None:
        self._expected, self._mark = policy, self.actor.episodes
        self.acting.swap(policy)
