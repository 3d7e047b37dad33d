"""The MQTT topic layout of a fleet, shared by the server and the edge agents.

Every topic of a fleet sits under ``fedrl/FLEET/``::

    fedrl/FLEET/model                  retained; server -> all: the deployed version's ModelHeader
    fedrl/FLEET/clients/NAME/up        device -> server: requests and updates (mqtt.proto Frames)
    fedrl/FLEET/clients/NAME/down      server -> device: registrations, tasks, models, acks, refusals
    fedrl/FLEET/clients/NAME/status    retained; "online" from the device, "offline" from it or its will

Everything is published with QoS 1. A device's broker username is its client name, so one ACL
pattern per topic (``%u``) keeps each device to its own topics (``examples/mosquitto/acl``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

QOS = 1  # at least once, everywhere: duplicates are recognised, losses are not
ONLINE, OFFLINE = b"online", b"offline"  # payloads of a status topic
_NAME = re.compile(r"[^/#+\x00]+")  # one topic level: no separators, no wildcards


@dataclass(frozen=True)
class Topics:
    """The topics of one fleet."""

    fleet: str = "default"

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.fleet):
            raise ValueError(f"fleet name {self.fleet!r} must be one MQTT topic level: no '/', '+', '#'")

    @property
    def root(self) -> str:
        """The prefix of every topic of the fleet."""
        return f"fedrl/{self.fleet}"

    @property
    def model(self) -> str:
        """Where the server keeps the retained announcement of the deployed version."""
        return f"{self.root}/model"

    def _client(self, client: str, leaf: str) -> str:
        if not _NAME.fullmatch(client):
            raise ValueError(f"client name {client!r} cannot be an MQTT topic level")
        return f"{self.root}/clients/{client}/{leaf}"

    def up(self, client: str) -> str:
        """Where ``client`` publishes its requests and updates."""
        return self._client(client, "up")

    def down(self, client: str) -> str:
        """Where the server publishes its replies to ``client``."""
        return self._client(client, "down")

    def status(self, client: str) -> str:
        """Where ``client``'s presence (online / offline) is retained."""
        return self._client(client, "status")

    def every(self, leaf: str) -> str:
        """The server's subscription to every device's ``leaf`` topic (``up``: requests, ``status``: presence)."""
        return f"{self.root}/clients/+/{leaf}"

    def client_of(self, topic: str) -> str:
        """The client a per-client topic of this fleet belongs to; ``ValueError`` for any other topic."""
        prefix = f"{self.root}/clients/"
        client, _, leaf = topic.removeprefix(prefix).partition("/")
        if not topic.startswith(prefix) or not client or leaf not in ("up", "down", "status"):
            raise ValueError(f"{topic!r} is not a client topic of fleet {self.fleet!r}")
        return client
