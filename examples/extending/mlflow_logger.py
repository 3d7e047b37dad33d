"""Log a fedrl run to MLflow: ``fedrl run EXPERIMENT.yaml --callback mlflow_logger:MLflowLogger``
(or ``fedrl server ... --callback``), with ``MLFLOW_TRACKING_URI`` saying where (``pip install
mlflow-skinny``; fedrl does not need it).

Every round's scalars become MLflow metrics at that round, each new global version's number a
metric too, and the last version deployed is kept as an artifact (``policy.npz``, which
``fedrl.load_policy`` and ``fedrl act`` run) when the run ends.
"""

import tempfile
from pathlib import Path

import mlflow

from fedrl.policy.files import save_npz


class MLflowLogger:
    """A fedrl callback: ``on_round``, ``on_deploy`` and ``close``."""

    def __init__(self, run_dir):
        self.run = mlflow.start_run(run_name=Path(run_dir).name)
        mlflow.log_param("fedrl_dir", str(run_dir))
        self.deployed = None

    def on_round(self, report):
        mlflow.log_metrics(report.scalars, step=report.round)

    def on_deploy(self, deployed):
        self.deployed = deployed
        mlflow.log_metric("deploy/version", deployed.version, step=deployed.version)

    def close(self):
        if self.deployed is not None:
            with tempfile.TemporaryDirectory() as folder:
                path = save_npz(Path(folder) / "policy.npz", self.deployed.params, self.deployed.card)
                mlflow.log_artifact(str(path))
        mlflow.end_run()
