"""The one base class of every config record: frozen, and strict about its keys."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class FrozenConfig(BaseModel):
    """A config record that cannot change after validation and rejects unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")
