"""benchmarks/recheck.py: a committed record re-measured from an empty cache, value by value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_scripts import load_script

from defcon.measure.composer import Composer
from defcon.report.reports import save_record

pytestmark = pytest.mark.filterwarnings("ignore")


def test_a_record_reproduces_and_a_changed_value_is_named(tmp_path: Path, capsys) -> None:
    script = load_script("recheck")
    composer = Composer("digits", profile="tiny", cache_dir=tmp_path / "cache")
    record = composer.compose(["model_watermark", "explanations"], seeds=1)
    path = tmp_path / "record.json"
    save_record(record, path)
    assert script.main([str(path)]) == 0
    data = json.loads(path.read_text())
    values = data["results"][0]["metrics"][0]["no_defense"]["values"]
    values[0] += 0.25  # a cached undefended reading the code no longer gives
    path.write_text(json.dumps(data))
    assert script.main([str(path)]) == 1
    out = capsys.readouterr().out
    assert "1 differ by more than 1e-09" in out
    assert f"{record.results[0].defense}." in out and ".no_defense: up to 0.25" in out
