"""`defcon compose` and `defcon bench` on the command line: output files and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run

pytestmark = pytest.mark.filterwarnings("ignore")


def test_compose_writes_record_json_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    result = run(
        "compose", "model_watermark", "explanations", "--dataset", "digits", "--seeds", "1",
        "--profile", "tiny", "--out", str(out), "--json", str(tmp_path / "r.json"),
        "--tolerance", "watermark_accuracy=0.2",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "model_watermark → explanations on digits" in text
    assert "watermark_accuracy" in text and "explanation_faithfulness" in text
    assert "Measured: inconclusive" in text  # one seed cannot tell held from dropped
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["order"] == ["model_watermark", "explanations"]
    assert record["tolerances"] == {"watermark_accuracy": 0.2}
    assert record["predicted"] == {
        "defcon": "effective",
        "naive": "effective",
        "factors": "effective",
    }
    assert len(list((out / "records").glob("*.json"))) == 1
    assert len(list((out / "plots").glob("*.png"))) == 1
    assert set(record["factor_probes"]) == {
        "no defense",
        "model_watermark",
        "explanations",
        "combined",
    }

    # --json - : the same record alone on stdout (from the cache), the table on stderr
    again = run(
        "compose", "model_watermark", "explanations", "--dataset", "digits", "--seeds", "1",
        "--profile", "tiny", "--out", str(out), "--json", "-",
        "--tolerance", "watermark_accuracy=0.2",
    )  # fmt: skip
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["label"] == record["label"]
    assert "watermark_accuracy" in again.stderr


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["model_watermark", "backdoor_pruning"],
            [
                "Def\\Con predicts a conflict",
                "conflict-free alternatives for model_theft, poisoning: ",
                "--force",
            ],
        ),  # fmt: skip
        (
            ["model_watermark", "explanations", "--dataset", "mnist"],
            ["unknown dataset 'mnist'", "digits"],
        ),
        (["model_watermark", "explanation"], ["unknown defense 'explanation'", "explanations"]),
        (["model_watermark"], ["at least 2 defenses"]),
        (["model_watermark", "model_watermark"], ["named twice"]),
        (["model_watermark", "explanations", "--seeds", "0"], ["--seeds must be at least 1"]),
        (
            ["model_watermark", "explanations", "--tolerance", "robust_accuracy=0.1"],
            ["robust_accuracy", "accepted: ", "explanation_faithfulness, watermark_accuracy"],
        ),
        (
            ["model_watermark", "explanations", "--tolerance", "watermark_accuracy"],
            ["METRIC=VALUE"],
        ),
        (["model_watermark", "explanations", "--profile", "huge"], ["unknown profile 'huge'"]),
        (["group_fairness", "explanations"], ["tabular data only"]),
    ],
)
def test_compose_bad_input(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    result = run("compose", *args, "--out", str(tmp_path))
    assert_one_line_error(result, *fragments)
    assert not list(tmp_path.rglob("*.pt"))  # refused before any training


def test_compose_unwritable_output_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run("compose", "model_watermark", "explanations", "--out", str(blocker / "sub"))
    assert_one_line_error(result, "--out", "not a writable folder")


def test_compose_missing_fmnist_folder(tmp_path: Path) -> None:
    result = run(
        "compose", "model_watermark", "explanations", "--dataset", "fmnist",
        "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert_one_line_error(result, "Fashion-MNIST file", "apt-get install dataset-fashion-mnist")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--pairs", "dp_sgd"], ["not a pair"]),
        (["--pairs", "dp_sgd+nope"], ["unknown defense 'nope'"]),
        (["--datasets", "imagenet"], ["unknown dataset 'imagenet'"]),
        (["--executor", "spark"], ["unknown executor 'spark'"]),
        (["--seeds", "0"], ["--seeds must be at least 1"]),
        (["--workers", "0"], ["--workers must be at least 1"]),
        (["--triples", "missing.toml"], ["triples file 'missing.toml' does not exist"]),
    ],
)
def test_bench_bad_input(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    result = run("bench", "--datasets", "digits", "--out", str(tmp_path), *args)
    assert_one_line_error(result, *fragments)


def test_bench_malformed_triples_file(tmp_path: Path) -> None:
    bad = tmp_path / "t.toml"
    bad.write_text('[[triple]]\ndefenses = ["dp_sgd", "explanations"]\n')
    result = run("bench", "--datasets", "digits", "--triples", str(bad), "--out", str(tmp_path))
    assert_one_line_error(result, "does not name three defenses")
