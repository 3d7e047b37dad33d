"""``fedrl aggregator``: register with the parent, open the region, serve its devices, forward.

The process registers with its parent as the client it was enrolled as (``fedrl fleet add-region``
on the parent), learns the experiment and the deployed version, opens (or resumes) the region's
state directory, serves the region's devices over gRPC or MQTT exactly as ``fedrl server`` serves
its own (``fedrl.server.app.serve_coordinator``: same tokens, limits, metrics, ``/healthz``), and
runs ``Upstream`` beside the round clock. ``server.json`` in the state directory says
``"role": "region"``. An unreachable parent at start is waited for, with backoff.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from fedrl.edge.backoff import BackoffConfig, backoff_delay
from fedrl.edge.device import CREDENTIAL_REASONS, Fatal, event, refused_credentials
from fedrl.edge.grpc_link import GrpcLink
from fedrl.edge.link import Unreachable, Untrusted
from fedrl.experiment.loading import read_resolved
from fedrl.region.upstream import Upstream
from fedrl.server.app import ServeOptions, serve_coordinator
from fedrl.server.config import load_region_config
from fedrl.server.metrics import ServerMetrics
from fedrl.server.region import RegionCoordinator
from fedrl.wire.records import Model, Registration, Rejected


@dataclass(frozen=True)
class ParentOptions:
    """How the region reaches its parent: the address, the region's enrolled name and token."""

    address: str
    name: str
    token: str
    credentials: grpc.ChannelCredentials | None = None  # None: plain text (loopback only, checked by the CLI)
    timeout_s: float = 60.0


class Stopped(Exception):
    """The region was stopped before its parent answered."""


def run_aggregator(
    parent: ParentOptions,
    options: ServeOptions,
    stop: threading.Event,
    config_path: Path | None = None,
    overrides: list[str] = (),
) -> None:
    """Serve a region until ``stop`` is set (or, with ``exit_when_finished``, the parent's run is
    over); ``Fatal`` when the parent refuses the region's credentials or cannot be trusted."""
    link = GrpcLink(parent.address, parent.token, parent.name, parent.credentials, parent.timeout_s)
    try:
        registration: Registration = _patiently(stop, link.register)
        config = load_region_config(config_path, list(overrides), read_resolved(registration.experiment_yaml))
        model: Model = _patiently(stop, lambda: link.pull(registration.deployed_version))
        metrics = ServerMetrics.create()
        region = RegionCoordinator.open_region(config, options.state_dir, parent.name, model, metrics)
        upstream = Upstream(link, region, stop)
        thread = threading.Thread(target=upstream.run, name="fedrl-upstream", daemon=True)
        thread.start()
        try:
            serve_coordinator(region, config, options, metrics, stop, role="region", facts=upstream.facts)
        finally:
            stop.set()
            thread.join()
        if upstream.fatal is not None:
            raise upstream.fatal
    except Stopped:
        return
    finally:
        link.close()


def _patiently(stop: threading.Event, call):
    """``call()`` until the parent answers, with backoff; ``Fatal`` for refused credentials or an
    untrusted parent, ``Stopped`` when ``stop`` is set first."""
    rng, backoff, failures = np.random.default_rng(), BackoffConfig(), 0
    while not stop.is_set():
        try:
            return call()
        except Unreachable as exc:
            wait_s = backoff_delay(backoff, failures, rng)
            failures += 1
            event(logging.WARNING, "parent_unreachable", attempt=failures, retry_in_s=wait_s, error=str(exc))
            stop.wait(wait_s)
        except Untrusted as exc:
            raise Fatal(str(exc)) from None
        except Rejected as exc:
            if exc.reason in CREDENTIAL_REASONS:
                raise refused_credentials(exc) from None
            raise Fatal(f"the parent refused the region: {exc.reason.value}: {exc.message}") from None
    raise Stopped
