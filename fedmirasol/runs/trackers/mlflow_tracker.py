"""MLflow: one MLflow run per run directory, in the experiment named after the config's `name`;
the resolved config as params, every round's figures as metrics (step = round), the final model,
report.json and config.json as artifacts.

The store is `output.mlflow-uri`, by default a SQLite file beside the run directories
(`<runs-dir>/mlflow.db`, MLflow's default kind of store; its file store is legacy and refused
unless MLFLOW_ALLOW_FILE_STORE is set) with artifacts in `<runs-dir>/mlartifacts/`. The run's id
is kept in the run directory (mlflow.json), so a resumed run continues the same MLflow run.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

from fedmirasol.config import RunConfig, to_flat
from fedmirasol.errors import ConfigError
from fedmirasol.runs import run_dir as rundir
from fedmirasol.runs.trackers.base import require

log = logging.getLogger("fedmirasol.runs")

RUN_FILE = "mlflow.json"  # in the run directory: the store and the MLflow run it continues
ARTIFACTS = (rundir.FINAL_MODEL_FILE, rundir.REPORT_FILE, rundir.CONFIG_FILE)
BATCH = 100  # MLflow takes at most 100 params (1000 metrics) per log_batch call


def default_store(run_dir: Path) -> tuple[str, str]:
    """(tracking URI, artifact location) of the default store, beside the run directories."""
    runs = run_dir.resolve().parent
    return f"sqlite:///{runs / 'mlflow.db'}", (runs / "mlartifacts").as_uri()


class MlflowTracker:
    name = "mlflow"
    package = "mlflow"

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def open(cls, config: RunConfig, run_dir: Path, first_step: int) -> "MlflowTracker":
        require(cls.package, cls.name)
        from mlflow.exceptions import MlflowException

        saved = run_dir / RUN_FILE
        uri = config.output.mlflow_uri
        try:
            with warnings.catch_warnings():
                # MLflow's SQL store asks SQLAlchemy 2.1 for a loader strategy it deprecated
                warnings.filterwarnings("ignore", "The ``noload`` loader strategy",
                                        DeprecationWarning)
                tracker = (saved.is_file() and cls._continue(json.loads(saved.read_text()),
                                                             first_step)) \
                    or cls._start(config, run_dir)
        except (MlflowException, OSError, ImportError) as error:
            where = f"config key 'output.mlflow-uri' = {uri!r}" if uri \
                else f"the default store {default_store(run_dir)[0]}"
            raise ConfigError(f"output.trackers names 'mlflow', but MLflow cannot open {where}: "
                              f"{error}") from error
        store = tracker.client.tracking_uri
        saved.write_text(json.dumps({"tracking-uri": store, "run-id": tracker.run_id},
                                    indent=1) + "\n")
        log.info("fedmirasol: MLflow run %s in %s", tracker.run_id, store)
        return tracker

    @classmethod
    def _start(cls, config: RunConfig, run_dir: Path) -> "MlflowTracker":
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri, artifacts = (config.output.mlflow_uri, None) if config.output.mlflow_uri \
            else default_store(run_dir)
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(config.name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            try:
                experiment_id = client.create_experiment(config.name, artifacts)
            except MlflowException:  # another run created it meanwhile
                experiment_id = client.get_experiment_by_name(config.name).experiment_id
        run = client.create_run(experiment_id, run_name=run_dir.name,
                                tags={"fedmirasol.run-dir": str(run_dir.resolve())})
        params = [Param(key, str(value)) for key, value in sorted(to_flat(config).items())]
        for start in range(0, len(params), BATCH):
            client.log_batch(run.info.run_id, params=params[start:start + BATCH])
        return cls(client, run.info.run_id)

    @classmethod
    def _continue(cls, saved: Mapping[str, str], first_step: int) -> "MlflowTracker | None":
        """The saved MLflow run, running again (None, logged, if its store no longer has it)."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=saved["tracking-uri"])
        try:
            client.get_run(saved["run-id"])
        except MlflowException as error:
            log.warning("fedmirasol: MLflow run %s is gone from %s (%s): starting a new one",
                        saved["run-id"], saved["tracking-uri"], error)
            return None
        client.update_run(saved["run-id"], status="RUNNING")
        client.set_tag(saved["run-id"], "fedmirasol.resumed-at-round", str(first_step))
        return cls(client, saved["run-id"])

    def log_round(self, step: int, scalars: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(tag, value, now, step) for tag, value in scalars.items()]
        for start in range(0, len(metrics), 10 * BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 10 * BATCH])

    def log_finished(self, run_dir: Path) -> None:
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)
