"""The order of defenses within a stage: every order to measure, and which measured one did better.

Landseer and "Defenses at Odds" (arXiv 2605.14514) find that interactions depend on the order of
defenses inside a stage, so `compose --order all` measures each order of a combination's
same-stage defenses (stages stay pre → in → post) and says which did better. "Better" compares
labels only (effective > inconclusive > ineffective): two orders with the same label are a tie,
because the verdict rule is the only comparison of measurements with a stated error rate.
Torch-free.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Literal

from defcon.errors import DefconError
from defcon.vocabulary import DefenseSpec, Stage

OrderChoice = Literal["checker", "given", "all"]
ORDER_CHOICES: tuple[str, ...] = ("checker", "given", "all")
MEASURED_ORDERS: tuple[str, ...] = ("checker", "given")  # what one measurement can apply
LABEL_RANK = {"effective": 2, "inconclusive": 1, "ineffective": 0}  # only these compare


def check_order_choice(
    choice: str, accepted: Sequence[str] = ORDER_CHOICES, option: str = "--order"
) -> OrderChoice:
    """`choice` if it is one of `accepted` (else one clear error naming them)."""
    if choice not in accepted:
        raise DefconError(f"unknown {option} '{choice}'; accepted: {', '.join(accepted)}")
    return choice  # type: ignore[return-value]


def given_order(specs: Mapping[str, DefenseSpec], names: Sequence[str]) -> tuple[str, ...]:
    """`names` grouped by stage (pre → in → post), each stage in the order given."""
    return tuple(sorted(names, key=lambda name: specs[name].stage.position))


def stage_orders(specs: Mapping[str, DefenseSpec], names: Sequence[str]) -> list[tuple[str, ...]]:
    """Every order of `names` that keeps the stages in pipeline order (the first is the given
    one); one order when no stage holds two defenses."""
    stages = sorted(Stage, key=lambda stage: stage.position)
    groups = [[n for n in given_order(specs, names) if specs[n].stage is s] for s in stages]
    per_stage = [list(itertools.permutations(group)) for group in groups if group]
    return [
        tuple(itertools.chain.from_iterable(choice)) for choice in itertools.product(*per_stage)
    ]


def better_order(labels: Mapping[tuple[str, ...], str]) -> tuple[str, ...] | None:
    """The one order whose label ranks highest, or None when the best rank is shared (a tie) or
    a label does not compare (not effective alone, unreliable)."""
    if not labels or any(label not in LABEL_RANK for label in labels.values()):
        return None
    best = max(LABEL_RANK[label] for label in labels.values())
    winners = [order for order, label in labels.items() if LABEL_RANK[label] == best]
    return winners[0] if len(winners) == 1 else None


def order_lines(measured: Mapping[tuple[str, ...], str], checker_order: Sequence[str]) -> list[str]:
    """One line per measured order with its label, then the checker's order and the better one."""
    lines = [f"{' → '.join(order)}: {label}" for order, label in measured.items()]
    better = better_order(measured)
    lines.append(f"the checker's order: {' → '.join(checker_order)}")
    if better is None:
        lines.append("no order measurably better (the best label is shared, or a label does not "
                     "compare)")  # fmt: skip
    else:
        agrees = "the checker's" if tuple(checker_order) == better else "not the checker's"
        lines.append(f"measured better: {' → '.join(better)} ({agrees})")
    return lines
