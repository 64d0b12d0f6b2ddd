"""`defcon report --format`: every format leads with the summary, carries the metric values, and
parses as what it claims to be (Markdown, a model card with model-index, a CycloneDX 1.6 BOM)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from defcon.audit.auditor import AuditRecord, MetricAudit
from defcon.cli.main import app
from defcon.effectiveness import Interval, Summary
from defcon.report.report_model import Estimate, build_report
from defcon.report.reports import load_record
from defcon.vocabulary import Direction, Risk

RECORD = Path(
    "benchmarks/results/records/adult/adult-quick-seeds0+3to5-adversarial_training+dp_sgd.json"
)


def _audit(tmp_path: Path) -> Path:
    seeds = (0, 1, 2)

    def summary(*values: float) -> Summary:
        return Summary.of(values)

    metric = MetricAudit(
        risk=Risk.MEMBERSHIP_INFERENCE, metric="mia_auc", riskier=Direction.HIGHER, primary=True,
        values={"none": summary(0.61, 0.63, 0.62), "dp_sgd": summary(0.51, 0.52, 0.50)},
        change={"none": Interval.of(0.0, 0.0, 0.0, 3), "dp_sgd": Interval.of(-0.11, -0.13, -0.09, 3)},
        risk_change={"none": "none", "dp_sgd": "down"},
    )  # fmt: skip
    record = AuditRecord(
        defenses=("dp_sgd",), order=("dp_sgd",), dataset="digits", profile="quick", seeds=seeds,
        arms=("none", "dp_sgd"), checker_label=None, risks=(Risk.MEMBERSHIP_INFERENCE,),
        references={}, not_measured={"evasion": "not named in this test"}, metrics=(metric,),
        clean_accuracy={"none": summary(0.95, 0.96, 0.94), "dp_sgd": summary(0.90, 0.91, 0.89)},
        predictions={}, code="test", versions={"defcon": "0.1.0"}, wall_time_s=0.0,
        cache=dict.fromkeys(("models_trained", "models_reused", "measurements_computed", "measurements_reused"), 0),
        seconds={},
    )  # fmt: skip
    path = tmp_path / "audit.json"
    path.write_text(record.model_dump_json())
    return path


def _report(*args: str) -> str:
    result = CliRunner().invoke(app, ["report", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_the_summary_names_what_dropped_by_how_much_and_the_utility_cost() -> None:
    report = build_report(load_record(RECORD))
    summary = "\n".join(report.summary)
    assert "Protected: adversarial_training (evasion)" in summary
    assert "Dropped" in summary and "robust_accuracy by 0.072 [0.056, 0.087]" in summary
    assert "Utility cost: clean accuracy 0.846" in summary and "change -0.024" in summary
    assert "Not measured: poisoning" in summary
    assert report.summary[0].startswith("Protected")


@pytest.mark.parametrize("fmt", ["md", "model-card", "cyclonedx"])
def test_each_format_carries_the_summary_and_the_values(fmt: str) -> None:
    out = _report(str(RECORD), "--format", fmt)
    assert "Dropped (worse in the combination than alone)" in out
    assert "0.700" in out and "0.629" in out  # robust accuracy alone, combined
    assert "∞" in out  # ε without DP is written, never nan or empty
    assert not re.search(r"\bnan\b", out, re.IGNORECASE)


def test_markdown_puts_the_summary_before_the_evidence_and_the_crosswalk() -> None:
    out = _report(str(RECORD), "--format", "md")
    assert out.index("## Summary") < out.index("## Evidence") < out.index("## Regulatory crosswalk")
    assert "| dp_sgd | epsilon | no defense | ∞ | 5 | held |" in out
    assert "Art. 15(5): adversarial examples or model evasion" in out
    assert "MEASURE 2.10 (privacy risk)" in out and "MEASURE 2.11 (fairness and bias)" in out


def test_model_card_front_matter_is_yaml_with_model_index() -> None:
    out = _report(str(RECORD), "--format", "model-card")
    assert out.startswith("---\n")
    front = yaml.safe_load(out.split("---\n")[1])
    results = front["model-index"][0]["results"][0]
    values = {(m["type"], m["name"]): m["value"] for m in results["metrics"]}
    assert all(isinstance(v, float) for v in values.values())
    assert any(t == "robust_accuracy" and abs(v - 0.7000) < 1e-3 for (t, _), v in values.items())
    assert results["dataset"]["name"] == "adult"
    assert "# adversarial_training + dp_sgd on adult" in out.split("---\n", 2)[2]


def test_model_card_metadata_parses_with_huggingface_hub() -> None:
    """Hugging Face's own parser (huggingface_hub.ModelCard, strict) reads the model-index: the
    same check the Hub applies to uploaded cards; a card without a dataset is refused."""
    hub = pytest.importorskip("huggingface_hub")
    out = _report(str(RECORD), "--format", "model-card")
    card = hub.ModelCard(out, ignore_metadata_errors=False)
    results = card.data.eval_results
    assert results and all(r.dataset_name == "adult" for r in results)
    assert {r.metric_type for r in results} >= {"robust_accuracy", "mia_auc"}
    front, body = out.split("---\n")[1], out.split("---\n", 2)[2]
    broken = yaml.safe_load(front)
    del broken["model-index"][0]["results"][0]["dataset"]  # the check can fail
    with pytest.raises(ValueError, match="model_index"):
        hub.ModelCard(f"---\n{yaml.safe_dump(broken)}---\n{body}", ignore_metadata_errors=False)


def test_cyclonedx_is_a_1_6_bom_with_a_model_card(tmp_path: Path) -> None:
    target = tmp_path / "bom.json"
    CliRunner().invoke(app, ["report", str(RECORD), "--format", "cyclonedx", "-o", str(target)])
    bom = json.loads(target.read_text())
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.6"
    card = bom["components"][0]["modelCard"]
    assert bom["components"][0]["type"] == "machine-learning-model"
    metrics = card["quantitativeAnalysis"]["performanceMetrics"]
    robust = [m for m in metrics if m["type"] == "robust_accuracy" and "alone" in m["slice"]]
    assert robust[0]["value"].startswith("0.700")
    bounds = robust[0]["confidenceInterval"]
    assert float(bounds["lowerBound"]) < 0.7000 < float(bounds["upperBound"])
    assert all(isinstance(m["value"], str) for m in metrics)
    assert any(m["value"] == "∞" for m in metrics)


def test_an_audit_record_renders_in_every_format(tmp_path: Path) -> None:
    path = _audit(tmp_path)
    md = _report(str(path), "--format", "md")
    assert "membership_inference: with dp_sgd the risk fell" in md
    assert "0.620 [" in md and "0.510 [" in md
    assert "| membership_inference | yes | mia_auc | Art. 15(5): confidentiality attacks |" in md
    assert "evasion: not named in this test" in md
    card = yaml.safe_load(_report(str(path), "-f", "model-card").split("---\n")[1])
    assert card["model-index"][0]["results"][0]["task"]["type"] == "image-classification"
    bom = json.loads(_report(str(path), "-f", "cyclonedx"))
    assert bom["components"][0]["modelCard"]["quantitativeAnalysis"]["performanceMetrics"]
    assert "fell" in bom["components"][0]["description"]


def test_two_records_make_one_document(tmp_path: Path) -> None:
    bom = json.loads(_report(str(RECORD), str(_audit(tmp_path)), "-f", "cyclonedx"))
    assert len(bom["components"]) == 2


def test_text_is_todays_output() -> None:
    out = _report(str(RECORD))
    assert "robust_accuracy" in out and "Measured:" in out


def test_a_bad_format_is_one_error_line_listing_the_formats() -> None:
    result = CliRunner().invoke(app, ["report", str(RECORD), "--format", "pdf"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "text, md, html, model-card, cyclonedx" in lines[0]


def test_infinite_estimates_read_as_infinity() -> None:
    assert Estimate.of(Summary.of([float("inf")] * 3)).text() == "∞"
    assert Estimate.of(Summary.of([float("nan"), 1.0])).text() == "n/a"


def test_the_bar_chart_writes_infinity_on_the_empty_bar(monkeypatch, tmp_path: Path) -> None:
    import defcon.report.reports as reports

    captured = {}
    monkeypatch.setattr(reports, "save_figure", lambda fig, path: captured.setdefault("fig", fig))
    reports.bar_chart(load_record(RECORD), tmp_path / "plot.png")
    texts = [t.get_text() for ax in captured["fig"].axes for t in ax.texts]
    assert "∞" in texts


def test_cyclonedx_validates_against_the_1_6_schema(tmp_path: Path) -> None:
    validation = pytest.importorskip("cyclonedx.validation.json")
    from cyclonedx.schema import SchemaVersion

    validator = validation.JsonStrictValidator(SchemaVersion.V1_6)
    bom = _report(str(RECORD), str(_audit(tmp_path)), "-f", "cyclonedx")
    assert validator.validate_str(bom) is None
    broken = json.loads(bom)
    broken["components"][0]["modelCard"]["quantitativeAnalysis"]["performanceMetrics"][0][
        "value"
    ] = 1
    assert validator.validate_str(json.dumps(broken)) is not None  # the check can fail


def _tags(page: str) -> list[str]:
    """Every start tag of the page, as a browser's tokenizer sees it."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list) -> None:
            found.append(tag)

    Tags().feed(page)
    return found


def _images(page: str) -> list[bytes]:
    import base64

    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_html_is_one_page_with_the_plot_embedded_summary_first() -> None:
    page = _report(str(RECORD), "--format", "html")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    images = _images(page)
    assert len(images) == 1 and images[0].startswith(b"\x89PNG\r\n\x1a\n")
    text = re.sub(r'src="data:[^"]+"', "", page)
    assert "Dropped (worse in the combination than alone)" in text
    assert "<td>0.700 [0.688, 0.712]</td>" not in text  # numbers sit in tabular cells
    assert '<td class="num">0.700 [0.688, 0.712]</td>' in text and "∞" in text  # 95 % t
    assert text.index("Summary") < text.index("<img") < text.index("Evidence")
    assert text.index("Evidence") < text.index("Regulatory crosswalk")
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)
    assert "script" not in _tags(page) and 'src="http' not in page  # nothing runs or loads


def test_html_escapes_every_string_a_record_carries(tmp_path: Path) -> None:
    """A record whose dataset and defense names are markup renders them as text."""
    record = load_record(RECORD)
    evil = "<script>alert('x')</script>"
    results = tuple(
        r.model_copy(update={"defense": evil}) if r.defense == "dp_sgd" else r
        for r in record.results
    )
    forged = record.model_copy(
        update={"dataset": evil, "defenses": ("adversarial_training", evil),
                "order": ("adversarial_training", evil), "results": results,
                "versions": {"defcon": '"><img src=x onerror=alert(1)>'}}
    )  # fmt: skip
    path = tmp_path / "evil.json"
    path.write_text(forged.model_dump_json())
    page = _report(str(path), "--format", "html")
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert set(_tags(page)) <= {
        "html", "head", "meta", "title", "style", "body", "section", "h1", "h2", "ul", "li",
        "img", "p", "table", "thead", "tbody", "tr", "th", "td", "hr",
    }  # fmt: skip
    assert len(_images(page)) == 1  # the forged record still draws


def test_html_of_an_audit_embeds_its_heatmap_and_a_bare_record_says_why_no_plot(
    tmp_path: Path, fake_record
) -> None:
    audit = _report(str(_audit(tmp_path)), "-f", "html")
    assert len(_images(audit)) == 1 and "membership_inference: with dp_sgd the risk fell" in audit
    bare = tmp_path / "bare.json"
    bare.write_text(fake_record().model_dump_json())
    page = _report(str(bare), "-f", "html")
    assert not _images(page) and "No plot: the record holds no per-defense metrics" in page


def _browser() -> str | None:
    import shutil

    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    return next((found for name in names if (found := shutil.which(name))), None)


def _plot_pixels(page: Path, shot: Path) -> int:
    """How many pixels of a headless browser's screenshot of `page` have the plot's blue."""
    import subprocess

    import matplotlib.image

    browser = _browser()
    assert browser is not None
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
         "--window-size=1200,1000", page.resolve().as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    pixels = matplotlib.image.imread(shot)[..., :3]
    blue = abs(pixels - (31 / 255, 119 / 255, 180 / 255)).max(axis=-1) < 0.05  # tab:blue bars
    return int(blue.sum())


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium installed")
def test_a_real_browser_renders_the_page_and_its_plot(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    CliRunner().invoke(app, ["report", str(RECORD), "-f", "html", "-o", str(page)])
    assert _plot_pixels(page, tmp_path / "shot.png") > 2000  # the embedded bars were drawn
    broken = tmp_path / "broken.html"  # the check can fail: a page whose image does not load
    broken.write_text(re.sub(r"base64,[^\"]+", "base64,AAAA", page.read_text()))
    assert _plot_pixels(broken, tmp_path / "broken.png") < 50


def test_reports_say_how_each_metric_was_measured_and_name_the_alternatives(fake_record) -> None:
    from defcon.catalog import builtin_catalog
    from defcon.report.renderers import markdown

    text = _report(str(RECORD), "--format", "md")
    section = text.split("## How each metric was measured", 1)[1].split("## Versions")[0]
    rmia = builtin_catalog()["dp_sgd"].metrics[0].description
    assert (
        f"- `dp_sgd.mia_auc`: {rmia}" in section
        and "adversarial_training.robust_accuracy" in section
    )
    assert "How each metric was measured" in _report(str(RECORD), "--format", "html")
    forced = fake_record().model_copy(
        update={"alternatives": (("model_watermark", "explanations"),)}
    )
    assert "alternatives for the same risks, in order: model_watermark → explanations" in (
        markdown([build_report(forced)])
    )


def test_the_evidence_interval_is_the_95_percent_t_interval_it_says() -> None:
    """The reports say 95 %; the verdict rule's 90 %-per-side interval would be an 80 % one."""
    from scipy import stats

    from defcon.report.report_model import EVIDENCE_LEVEL, Estimate

    values = (0.69, 0.70, 0.71)
    estimate = Estimate.of(Summary.of(values))
    half = stats.t.ppf(0.975, df=2) * stats.sem(values)
    assert EVIDENCE_LEVEL == "95%"
    assert estimate.lower == pytest.approx(0.70 - half) and estimate.upper == pytest.approx(
        0.70 + half
    )
