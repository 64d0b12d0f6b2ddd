"""`defcon report` prints an audit record as well as a composition record."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from defcon.audit.auditor import AuditRecord
from defcon.cli.main import app
from defcon.effectiveness import Summary


def test_report_reads_an_audit_record(tmp_path: Path) -> None:
    record = AuditRecord(
        defenses=("dp_sgd",), order=("dp_sgd",), dataset="digits", profile="quick", seeds=(0,),
        arms=("none", "dp_sgd"), checker_label=None, risks=(), references={},
        not_measured={"membership_inference": "no attack in this test"}, metrics=(),
        clean_accuracy={arm: Summary(mean=0.9, std=0.0, values=(0.9,)) for arm in ('none', 'dp_sgd')}, predictions={}, code="test", versions={}, wall_time_s=0.0,
        cache=dict.fromkeys(('models_trained', 'models_reused', 'measurements_computed', 'measurements_reused'), 0), seconds={},
    )  # fmt: skip
    path = tmp_path / "audit.json"
    path.write_text(record.model_dump_json())
    result = CliRunner().invoke(app, ["report", str(path)])
    assert result.exit_code == 0, result.output
    assert "Field required" not in result.output
    assert "dp_sgd" in result.output
