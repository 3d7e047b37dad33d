"""A round callback of your own: one JSON line per round, beside the run directory.

``fedrl run examples/extending/cartpole_geomedian.yaml --callback jsonl_logger:JsonlLogger``
(run from this folder, or with it on PYTHONPATH). The same shape takes a Weights & Biases or MLflow
logger: open the run in ``__init__``, log ``report.scalars`` in ``on_round``, finish in ``close``.
"""

import json
from pathlib import Path


class JsonlLogger:
    """Writes ``RUN_DIR.rounds.jsonl``: the round, the env steps and every scalar fedrl measured."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(f"{run_dir}.rounds.jsonl")
        self.file = self.path.open("a")  # a resumed run appends

    def on_round(self, report) -> None:
        """One line per round."""
        self.file.write(json.dumps({"round": report.round, "env_steps": report.env_steps, **report.scalars}) + "\n")
        self.file.flush()

    def close(self) -> None:
        """Close the file."""
        self.file.close()
