"""MLflow and trackio tracking, offline: an SFT stage's metrics reach each backend through
TRL's report_to, read back with the backend's own API (MLflow's client on the local file
store; trackio's local SQLite storage), and lineage records the run.

Both run without network: MLflow writes a file store under ``tracking/sft/mlruns`` (MLflow 3
refuses its maintenance-mode file store unless ``MLFLOW_ALLOW_FILE_STORE`` is set, which
`tracking_env` does; the SQL store would need SQLAlchemy, which mlflow-skinny does not ship);
trackio writes ``tracking/trackio/<project>.db``. trackio fixes its directory at its first
import, so its test runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("trl")

from rlhfspec.runtime.run import run  # noqa: E402
from tests.train.test_scale_stages import with_settings  # noqa: E402
from tests.train.test_train_stages import small_project  # noqa: E402


@pytest.mark.slow
def test_mlflow_offline_run_read_back_with_mlflows_client(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    spec = with_settings(
        small_project(tmp_path, records=120),
        "compute: {device: cpu}\ntracking: {backend: mlflow, project: scale-test}\n",
    )
    run_dir = run(spec, display="spec", run_dir=tmp_path / "run", until="sft", log=lambda m: None)
    metrics = json.loads((run_dir / "lineage.json").read_text())["stages"]["sft"]["metrics"]
    tracking = metrics["tracking"]
    assert (tracking["backend"], tracking["mode"], tracking["dir"]) == (
        "mlflow",
        "offline",
        "tracking/sft",
    )
    client = MlflowClient(tracking_uri=(run_dir / "tracking" / "sft" / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("scale-test")
    assert experiment is not None
    recorded = client.get_run(tracking["backend_run_id"])
    assert recorded.info.experiment_id == experiment.experiment_id
    assert recorded.info.run_name == tracking["run_name"] and recorded.info.status == "FINISHED"
    losses = [m.value for m in client.get_metric_history(recorded.info.run_id, "loss")]
    assert losses and all(loss > 0 for loss in losses)
    assert recorded.data.metrics["train_loss"] == pytest.approx(metrics["train_loss"], rel=1e-4)


TRACKIO_SCRIPT = """
import json, sys
from pathlib import Path
from rlhfspec.runtime.run import run

spec, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
run(spec, display="spec", run_dir=run_dir, until="sft", log=lambda m: None)
"""


@pytest.mark.slow
def test_trackio_local_run_read_back_from_its_storage(tmp_path: Path) -> None:
    pytest.importorskip("trackio")
    spec = with_settings(
        small_project(tmp_path, records=120),
        "compute: {device: cpu}\ntracking: {backend: trackio, project: scale-test}\n",
    )
    script = tmp_path / "trackio_run.py"
    script.write_text(textwrap.dedent(TRACKIO_SCRIPT))
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(script), str(spec), str(run_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((run_dir / "lineage.json").read_text())["stages"]["sft"]["metrics"]
    tracking = metrics["tracking"]
    assert (tracking["backend"], tracking["dir"]) == ("trackio", "tracking/trackio")
    assert (run_dir / "tracking" / "trackio" / "scale-test.db").is_file()
    # trackio's own reader, pointed at the run's folder (its directory is fixed at import)
    reader = textwrap.dedent(
        """
        import json, sys
        from trackio.sqlite_storage import SQLiteStorage
        print(json.dumps({
            "runs": SQLiteStorage.get_runs("scale-test"),
            "logs": SQLiteStorage.get_logs("scale-test", sys.argv[1]),
        }, default=str))
        """
    )
    read = subprocess.run(
        [sys.executable, "-c", reader, tracking["run_name"]],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_env(), "TRACKIO_DIR": str(run_dir / "tracking" / "trackio")},
    )
    assert read.returncode == 0, read.stderr[-3000:]
    stored = json.loads(read.stdout.strip().splitlines()[-1])
    assert stored["runs"] == [tracking["run_name"]]
    losses = [row["train/loss"] for row in stored["logs"] if row.get("train/loss") is not None]
    assert losses and all(loss > 0 for loss in losses)


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)
