"""Smart-city air-quality sensing on a solar-powered sensor: a non-IID federated RL scenario.

Each client is a battery-powered sensor site. Every 10 minutes it chooses to sleep, sample the
air, or sample and transmit a report. A hidden pollution process (a diurnal baseline plus
random pollution episodes that decay over a few hours) decides whether a report is useful; a
solar panel refills the battery by day. The agent must report episodes promptly without
draining its battery. Sites differ in pollution (baseline, daily swing, how often and how
large the episodes are), in sunshine and in the energy their hardware spends.

The energy model follows the energy-neutral operation of harvesting sensors (Kansal et al.,
"Power Management in Energy Harvesting Sensor Networks", ACM TECS 6(4), 2007; Sharma et al.,
"Optimal Energy Management Policies for Energy Harvesting Sensor Nodes", IEEE TWC 9(4), 2010).
The alert level is the US EPA 24-hour PM2.5 standard, 35 ug/m^3. Exact equations are in
``docs/envs.md``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fedrl.envs.base import Discrete, EnvFamily, ParamRange

STEPS_PER_DAY = 144  # one step is 10 minutes
SLEEP, SAMPLE, TRANSMIT = 0, 1, 2

ALERT_LEVEL = 35.0  # ug/m^3: a reading at or above it is an alert
REFERENCE_LEVEL = 100.0  # ug/m^3: readings are divided by it in the observation
NOISE_SD = 2.0  # ug/m^3: sensor noise
PEAK_HOUR = 8.0  # the diurnal cycle peaks with the morning traffic
DECAY = np.exp(-1.0 / 12.0)  # episode excess decays with a 2-hour time constant
EPISODE_FLOOR = 5.0  # ug/m^3: an episode is over once its excess falls below this

IDLE_DRAIN = 0.001  # battery fraction a sleeping sensor spends per step
CLOUD_MAX = 0.8  # a fully clouded step harvests 20% of clear sky

REPORT_REWARD = 1.0  # first report of an episode, however late
PROMPT_BONUS = 4.0  # extra for a report at the episode's first step ...
PROMPT_STEPS = 6.0  # ... decaying with this time constant (1 hour)
FALSE_ALARM_PENALTY = 0.5  # transmitting while no episode is active
ENERGY_PENALTY = 2.0  # per unit of battery spent on sampling and transmitting
EMPTY_PENALTY = 10.0  # the battery ran out: the episode ends


class AirQualityPhysics(NamedTuple):
    """One sensor site's hidden and device state, each field ``(C, E)``."""

    clock: np.ndarray  # int64 steps since midnight of the first day
    battery: np.ndarray  # float64 charge in [0, 1]
    excess: np.ndarray  # float64 pollution added by the active episode (0: none), ug/m^3
    age: np.ndarray  # int64 steps since the active episode started
    reported: np.ndarray  # bool: the active episode has been reported
    reading: np.ndarray  # float64 last sampled concentration, ug/m^3
    since_sample: np.ndarray  # int64 steps since the last sample
    since_transmit: np.ndarray  # int64 steps since the last transmission


PARAM_RANGES = (
    ParamRange("baseline", 20.0, 10.0, 30.0, "mean background concentration (ug/m^3)"),
    ParamRange("diurnal_amp", 0.3, 0.1, 0.5, "daily swing of the background, as a fraction of it"),
    ParamRange("episode_rate", 0.015, 0.005, 0.025, "chance per step that a pollution episode starts"),
    ParamRange("episode_size", 40.0, 20.0, 60.0, "mean initial excess of an episode (ug/m^3)"),
    ParamRange("solar_peak", 0.02, 0.01, 0.03, "battery fraction harvested per step at clear noon"),
    ParamRange("sample_cost", 0.01, 0.005, 0.02, "battery fraction one sample spends"),
    ParamRange("transmit_cost", 0.04, 0.02, 0.06, "extra battery fraction one transmission spends"),
)


def _hour(clock: np.ndarray) -> np.ndarray:
    return (clock % STEPS_PER_DAY) * (24.0 / STEPS_PER_DAY)


def _concentration(params: np.ndarray, clock: np.ndarray, excess: np.ndarray) -> np.ndarray:
    baseline, diurnal_amp = params[:, 0, None], params[:, 1, None]
    cycle = np.cos(2 * np.pi * (_hour(clock) - PEAK_HOUR) / 24.0)
    return baseline * (1.0 + diurnal_amp * cycle) + excess


def _measure(params, clock, excess, rng: np.random.Generator) -> np.ndarray:
    noise = NOISE_SD * rng.standard_normal(clock.shape)
    return np.maximum(0.0, _concentration(params, clock, excess) + noise)


def init_state(params: np.ndarray, n_envs: int, rng: np.random.Generator) -> AirQualityPhysics:
    """A random time of day, battery uniform on [0.5, 0.8], no episode, one fresh reading."""
    shape = (params.shape[0], n_envs)
    clock = rng.integers(0, STEPS_PER_DAY, size=shape)
    excess = np.zeros(shape)
    return AirQualityPhysics(
        clock=clock,
        battery=rng.uniform(0.5, 0.8, size=shape),
        excess=excess,
        age=np.zeros(shape, dtype=np.int64),
        reported=np.zeros(shape, dtype=bool),
        reading=_measure(params, clock, excess, rng),
        since_sample=np.zeros(shape, dtype=np.int64),
        since_transmit=np.full(shape, STEPS_PER_DAY, dtype=np.int64),
    )


def _harvest(params: np.ndarray, clock: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    daylight = np.maximum(0.0, np.sin(np.pi * (_hour(clock) - 6.0) / 12.0))
    clouds = CLOUD_MAX * rng.random(clock.shape)
    return params[:, 4, None] * daylight * (1.0 - clouds)


def _advance_episodes(params: np.ndarray, s: AirQualityPhysics, reported: np.ndarray, rng: np.random.Generator):
    """Decay the active episodes and start new ones where none is active."""
    episode_rate, episode_size = params[:, 2, None], params[:, 3, None]
    decayed = s.excess * DECAY
    ongoing = decayed >= EPISODE_FLOOR
    onset = ~ongoing & (rng.random(s.excess.shape) < episode_rate)
    size = episode_size * rng.uniform(0.5, 1.5, size=s.excess.shape)
    excess = np.where(onset, size, np.where(ongoing, decayed, 0.0))
    return excess, np.where(onset, 0, s.age + 1), reported & ~onset


def transition(params: np.ndarray, s: AirQualityPhysics, action: np.ndarray, rng: np.random.Generator):
    """Act on the current 10 minutes (spend energy, sample, report), then let time pass."""
    sample_cost, transmit_cost = params[:, 5, None], params[:, 6, None]
    action = np.asarray(action).reshape(s.battery.shape)
    samples, transmits = action >= SAMPLE, action == TRANSMIT
    spent = sample_cost * samples + transmit_cost * transmits
    battery = s.battery - IDLE_DRAIN - spent + _harvest(params, s.clock, rng)
    empty = battery <= 0.0
    active = s.excess > 0.0
    first_report = transmits & active & ~s.reported
    reward = (
        first_report * (REPORT_REWARD + PROMPT_BONUS * np.exp(-s.age / PROMPT_STEPS))
        - FALSE_ALARM_PENALTY * (transmits & ~active)
        - ENERGY_PENALTY * spent
        - EMPTY_PENALTY * empty
    )
    measured = _measure(params, s.clock, s.excess, rng)
    excess, age, reported = _advance_episodes(params, s, s.reported | first_report, rng)
    new = AirQualityPhysics(
        clock=s.clock + 1,
        battery=np.clip(battery, 0.0, 1.0),
        excess=excess,
        age=age,
        reported=reported,
        reading=np.where(samples, measured, s.reading),
        since_sample=np.where(samples, 0, s.since_sample + 1),
        since_transmit=np.where(transmits, 0, s.since_transmit + 1),
    )
    return new, reward, empty


def observe(params: np.ndarray, s: AirQualityPhysics) -> np.ndarray:
    """float32 ``(C, E, 7)``: sin and cos of the time of day, battery, last reading / 100,
    steps since the last sample / 144, last reading at or above the alert level (0/1), and
    steps since the last transmission / 144 (both step counts capped at one day)."""
    angle = 2 * np.pi * (s.clock % STEPS_PER_DAY) / STEPS_PER_DAY
    return np.stack(
        [
            np.sin(angle),
            np.cos(angle),
            s.battery,
            s.reading / REFERENCE_LEVEL,
            np.minimum(s.since_sample, STEPS_PER_DAY) / STEPS_PER_DAY,
            s.reading >= ALERT_LEVEL,
            np.minimum(s.since_transmit, STEPS_PER_DAY) / STEPS_PER_DAY,
        ],
        axis=-1,
    ).astype(np.float32)


def hand_policy(obs: np.ndarray, period: int = 3, quiet: int = 24, reserve: float = 0.15) -> np.ndarray:
    """A reference heuristic: with less than ``reserve`` charge sleep; on an alert not reported
    in the last ``quiet`` steps transmit; otherwise sample every ``period`` steps.

    Takes observations ``(..., 7)`` and returns int64 actions ``(...)``.
    """
    battery, alert = obs[..., 2], obs[..., 5] > 0.5
    since_sample = np.rint(obs[..., 4] * STEPS_PER_DAY)
    since_transmit = np.rint(obs[..., 6] * STEPS_PER_DAY)
    action = np.where(since_sample >= period - 1, SAMPLE, SLEEP)
    action = np.where(alert & (since_transmit >= quiet), TRANSMIT, action)
    return np.where(battery < reserve, SLEEP, action).astype(np.int64)


AIRQUALITY = EnvFamily(
    name="airquality",
    description=(
        "Solar-powered air-quality sensor: sleep, sample or report pollution episodes "
        "promptly without draining the battery (discrete: sleep/sample/transmit)."
    ),
    param_ranges=PARAM_RANGES,
    obs_dim=7,
    action_space=Discrete(3),
    time_limit=2 * STEPS_PER_DAY,
    solved_return=9.0,  # the hand policy averages 9.9 on standard params (docs/envs.md)
    init_state=init_state,
    transition=transition,
    observe=observe,
)
