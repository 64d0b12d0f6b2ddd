"""What defcon changed in the user's data or model, said in one place: nothing is silent.

Every transformation defcon applies on its own initiative is a `Notice`: rows dropped when a
table is read, how labels became class ids (which class is positive), how a sensitive column
became groups (binned or not), a layer an in-training defense swapped in the architecture
(DP-SGD: BatchNorm → GroupNorm), and, per defense, whether it acted at all (the share of test
predictions it changes). Records carry them (`notices`, empty by default, so older records
load) and the reports print each as one `note:` line before the table. This module is the
vocabulary (data-reading code records notices here); the readings that need trained models live
in `defcon.measure.model_notices`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NoticeKind = Literal[
    "rows_dropped", "label_encoding", "sensitive_groups", "architecture", "defense_acted"
]
CHANGED = "changed_predictions"  # reading: share of test predictions changed vs no defense
CHANGED_VS_COMBINED = "changed_vs_combined"  # a pair: share the other defense changes
ACTED = "acted"  # the name of the reading on every arm


class Notice(BaseModel):
    """One thing defcon changed: the line it prints (`text`) and its numbers and names."""

    model_config = ConfigDict(frozen=True)

    kind: NoticeKind
    subject: str = Field(description="the column, file or defense it is about")
    text: str = Field(description="the line printed after 'note: '")
    values: dict[str, float] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)


Notices = tuple[Notice, ...]


def notice_lines(notices: Sequence[Notice]) -> list[str]:
    """The `note:` lines a report prints before its table."""
    return [f"note: {notice.text}" for notice in notices]
