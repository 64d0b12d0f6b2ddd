"""Output watermark of the prediction API: DAWN (Szyller et al., ACM MM 2021).

Mechanism. A model thief extracts a surrogate by querying the owner's API and training on its
answers. DAWN answers a small keyed fraction of the queries with a wrong label. Whether a query is
watermarked, and which wrong label it gets, is a deterministic function of a secret key and the
query itself (HMAC-SHA256 of the input rounded to a fixed grid), so the same query always gets the
same answer and the thief cannot average the watermark away by re-asking. A surrogate trained on
the API's answers learns (memorises) those wrong labels; the owner, who can recompute from the key
which of the thief's queries were watermarked and with which label, proves the theft by the
surrogate's agreement with the watermark labels, which an independently trained model reproduces
only by chance.

Here `apply` returns `WatermarkedAPI`, an nn.Module wrapping (a copy of) the model: for a
watermarked input the logits of the model's own top class and of the watermark class are swapped,
so the wrong class becomes the argmax; all other inputs get the model's logits unchanged. The
wrong label is ``(ŷ + 1 + h mod (C − 1)) mod C`` where ŷ is the wrapped model's prediction and
h a keyed hash of the input, so it always differs from ŷ (also for binary tasks).

`measure` plays the thief against the given model: it queries it on the thief's own data (the
validation split plus a seeded half of the test split, never the owner's training data) and trains
a fresh surrogate on the answered labels. The thief's architecture belongs to the threat model:
the dataset's default (`arch_for`, BatchNorm) whatever the victim uses (DP-SGD's GroupNorm is the
owner's choice, unknown to the thief). The thief trains like a practitioner: it holds out a seeded
share (`thief_holdout`) of its own queries, measures after each epoch the surrogate's agreement
with the API's answers on them, stops after `patience` epochs without improvement (at most
`surrogate_epochs`) and keeps the best epoch's weights. The judged
`watermark_evidence` is DAWN's verification: the binomial test that the surrogate agrees with the
watermark labels more often than a model independent of the key would (`watermark_evidence`);
`extracted_watermark_accuracy`, a diagnostic, is the share of the watermarked queries the surrogate was trained
on (recomputed from the key, derived from the seed) on which the surrogate outputs the watermark
label. The watermark label is computed from the prediction of the unprotected model inside the
API (found in the served pipeline); when the given model carries no DAWN API (no defense, or the
watermark was stripped), the model itself is the reference, the surrogate copies its honest
answers and the number is low.

Early stopping matters. A surrogate memorises the keyed wrong answers only when trained well past
its best agreement with the API: on the tiny digits / Fashion-MNIST profiles the held-out
agreement peaks after 4–11 epochs, where the watermark accuracy is 0.04–0.19; it reached 1.00
only after ~20–40 epochs of overtraining that made the copy no better (slightly worse) at
agreeing with the API. A thief stopping at its best copy is the realistic one; `early_stopping =
false` restores the overtrained thief (the metric was then 1.00 in every Fashion-MNIST setting).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from scipy import stats
from torch import nn

from defcon.engine.data import Split
from defcon.engine.defense import (
    DefenseConfig,
    Environment,
    PostTrainingDefense,
    ServingWrapper,
    find_served,
)
from defcon.engine.extraction import Extraction, extract
from defcon.engine.models import arch_for, predict
from defcon.engine.seeds import derived_seed


class OutputWatermarkConfig(DefenseConfig):
    """Settings of the DAWN output watermark and of the thief it is measured against."""

    fraction: float = Field(
        default=0.05, gt=0, lt=0.5, description="share of queries answered with a watermark label"
    )
    decimals: int = Field(
        default=4, ge=0, le=8, description="inputs are rounded to this many decimals before hashing"
    )
    surrogate_epochs: int = Field(
        default=40, ge=1, description="most epochs the thief trains its surrogate for"
    )
    thief_holdout: float = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="share of its queries the thief holds out to early-stop on agreement",
    )
    patience: int = Field(
        default=3, ge=1, description="epochs without better held-out agreement before stopping"
    )
    early_stopping: bool = Field(
        default=True,
        description="False: the thief trains all surrogate_epochs and keeps the last weights "
        "(an overtrained surrogate, which memorises the watermark; the setting before early "
        "stopping)",
    )
    thief_test_share: float = Field(
        default=0.5, ge=0, le=1, description="share of the test split the thief adds to its queries"
    )


def watermark_key(seed: int) -> bytes:
    """The owner's secret key, re-derivable from the run's seed."""
    return hashlib.sha256(f"dawn-key:{derived_seed(seed, 'output_watermark')}".encode()).digest()


def keyed_choice(
    x: torch.Tensor, key: bytes, fraction: float, decimals: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per input: whether it is watermarked, and a keyed offset that picks its wrong label.

    A function of the key and the input's values only (not of the batch it arrives in).
    """
    grid = torch.round(x.detach().reshape(len(x), -1).double() * 10**decimals).to(torch.int64)
    rows = grid.cpu().numpy()
    marked = np.zeros(len(rows), dtype=bool)
    offsets = np.zeros(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        digest = hmac.new(key, row.tobytes(), hashlib.sha256).digest()
        marked[i] = int.from_bytes(digest[:8], "little") / 2.0**64 < fraction
        offsets[i] = int.from_bytes(digest[8:12], "little")
    return torch.from_numpy(marked), torch.from_numpy(offsets)


def watermark_labels(
    predictions: torch.Tensor, offsets: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """The wrong label DAWN answers: never the model's own prediction."""
    return (predictions + 1 + offsets % (num_classes - 1)) % num_classes


EVIDENCE_CAP = 10.0  # as dataset inference's: beyond p = 1e-10 more evidence changes no dispute


def watermark_evidence(
    agreed: int, marked: int, disagreed: int, unmarked: int, num_classes: int
) -> float:
    """min(10, −log10 p) for the p-value that a suspect model independent of the key agrees with the
    watermark labels on `agreed` of the `marked` queries (DAWN's verification is this binomial
    test; Szyller et al., ACM MM 2021, Sec. 5).

    Null rate: the key picks the watermark label uniformly among the C − 1 wrong classes and
    marks queries independently of their content, so an independent suspect lands on it only
    when it disagrees with the model (as often on marked queries as on unmarked ones) and then
    with probability 1/(C − 1). The disagreement rate is the upper 95 % Clopper–Pearson bound
    of `disagreed`/`unmarked` (conservative: the evidence is never overstated by its estimate).
    """
    if marked <= 0 or unmarked <= 0:
        return float("nan")
    rate = (
        float(stats.beta.ppf(0.95, disagreed + 1, unmarked - disagreed))
        if disagreed < unmarked
        else 1.0
    )
    null = min(1.0, rate / (num_classes - 1))
    if agreed <= 0 or null >= 1.0:
        return 0.0
    log_p = float(stats.binom.logsf(agreed - 1, marked, null))  # ln P(X ≥ agreed)
    return min(EVIDENCE_CAP, max(0.0, -log_p / math.log(10)))


class WatermarkedAPI(ServingWrapper):
    """The protected prediction API: the model's logits, with keyed answers made wrong."""

    def __init__(self, model: nn.Module, key: bytes, fraction: float, decimals: int) -> None:
        super().__init__()
        self.model = model
        self.key = key
        self.fraction = fraction
        self.decimals = decimals

    def saved_settings(self) -> dict[str, Any]:
        """The key (the owner's secret: a saved pipeline must stay private), fraction, grid."""
        return {"key": self.key.hex(), "fraction": self.fraction, "decimals": self.decimals}

    @classmethod
    def restore(
        cls, model: nn.Module, settings: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
    ) -> WatermarkedAPI:
        return cls(
            model, bytes.fromhex(settings["key"]), settings["fraction"], settings["decimals"]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        marked, offsets = keyed_choice(x, self.key, self.fraction, self.decimals)
        if not bool(marked.any()):
            return logits
        rows = torch.nonzero(marked).flatten().to(logits.device)
        own = logits[rows].argmax(1)
        wrong = watermark_labels(own, offsets[marked].to(logits.device), logits.shape[1])
        out = logits.clone()
        out[rows, own] = logits[rows, wrong]
        out[rows, wrong] = logits[rows, own]
        return out


def find_api(model: nn.Module) -> WatermarkedAPI | None:
    """The DAWN API inside `model` (possibly wrapped by later defenses), if any."""
    return find_served(model, WatermarkedAPI)


class OutputWatermark(PostTrainingDefense):
    """DAWN: a keyed fraction of the API's answers is wrong, and extracted models inherit them."""

    Config: ClassVar[type[DefenseConfig]] = OutputWatermarkConfig

    config: OutputWatermarkConfig

    def apply(self, model: nn.Module, env: Environment) -> nn.Module:
        """The protected API around a copy of `model`."""
        cfg = self.config
        return WatermarkedAPI(
            copy.deepcopy(model), watermark_key(env.seed), cfg.fraction, cfg.decimals
        )

    def thief_queries(self, env: Environment) -> Split:
        """The thief's own inputs: the validation split and a seeded share of the test split."""
        test = env.dataset.test
        rng = np.random.default_rng(derived_seed(env.seed, "output_watermark:thief"))
        count = int(round(self.config.thief_test_share * len(test)))
        part = test.subset(np.sort(rng.permutation(len(test))[:count]))
        return env.dataset.val.concat(part)

    def split_queries(self, queries: Split, env: Environment) -> tuple[Split, Split]:
        """The thief's training queries and the seeded share it holds out for early stopping."""
        rng = np.random.default_rng(derived_seed(env.seed, "output_watermark:holdout"))
        order = rng.permutation(len(queries))
        held = max(1, int(round(self.config.thief_holdout * len(queries))))
        return queries.subset(np.sort(order[held:])), queries.subset(np.sort(order[:held]))

    def steal(self, stolen: Split, held_out: Split, env: Environment) -> Extraction:
        """The thief's surrogate (`defcon.engine.extraction`): the threat model's architecture trained
        on the API's answers, early-stopped on agreement with the API on its held-out queries."""
        cfg = self.config
        return extract(
            stolen, held_out, arch_for(env.dataset, width=env.profile.width), env.profile,
            derived_seed(env.seed, "output_watermark:surrogate"),
            max_epochs=cfg.surrogate_epochs, patience=cfg.patience,
            early_stopping=cfg.early_stopping, device=env.device,
        )  # fmt: skip

    def measure(self, model: nn.Module, env: Environment) -> dict[str, float]:
        """Extract a surrogate by querying `model`; its agreement with the watermark labels on
        the watermarked queries it was trained on."""
        cfg = self.config
        queries = self.thief_queries(env)
        answers = predict(model, queries.x)  # the thief only sees top-1 labels
        stolen, held_out = self.split_queries(queries.with_(y=answers), env)
        marked, offsets = keyed_choice(
            stolen.x, watermark_key(env.seed), cfg.fraction, cfg.decimals
        )
        if not bool(marked.any()):
            return {
                "extracted_watermark_accuracy": float("nan"),
                "watermark_evidence": float("nan"),
            }
        surrogate = self.steal(stolen, held_out, env).model
        api = find_api(model)
        reference = api.model if api is not None else model
        honest = predict(reference, stolen.x)
        copied = predict(surrogate, stolen.x)
        classes = env.dataset.num_classes
        expected = watermark_labels(honest[marked], offsets[marked], classes)
        agreed = int((copied[marked] == expected).sum())
        disagreed = int((copied[~marked] != honest[~marked]).sum())
        return {
            "extracted_watermark_accuracy": agreed / int(marked.sum()),
            "watermark_evidence": watermark_evidence(
                agreed, int(marked.sum()), disagreed, int((~marked).sum()), classes
            ),
        }
