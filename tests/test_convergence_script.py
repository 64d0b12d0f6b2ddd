"""benchmarks/convergence.py: per epoch count and scenario, the verdict rule's own convergence
check over the seeds, so the epochs a profile declares can be shown sufficient."""

from __future__ import annotations

from benchmark_scripts import load_script


def test_the_report_says_which_epoch_counts_pass_the_verdict_rules_check() -> None:
    lines = list(load_script("convergence").report("digits", "tiny", [4, 12], [0]))
    assert lines[0].startswith("digits, profile tiny, seeds [0]")
    four, four_poisoned, twelve, twelve_poisoned = lines[1:]
    assert four.startswith("  4 epochs, clean:") and "4 epochs, BadNets-poisoned" in four_poisoned
    assert twelve.startswith("  12 epochs, clean:") and "12 epochs, BadNets" in twelve_poisoned
    for line in lines[1:]:
        gain = float(line.split(": ")[1].split("/")[0])
        # the check fails a model whose last epoch still gains more than the noise floor (0.01)
        # and its own swing; four epochs of Digits still learn, twelve no longer do
        assert ("NOT converged" in line) == (gain > 0.01)
    assert "NOT converged" in four and "→ converged" in twelve
