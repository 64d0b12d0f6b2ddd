"""One run's settings: what every command that trains (compose, audit, bench) and the Python API
share, declared once.

`RunSettings` is a frozen value built and checked once at the edge (`RunSettings.checked`: one
`DefconError` naming the option and what is accepted) and then passed unchanged to the
`Composer` (`Composer.from_settings`), the auditor (through its composer) and every bench task.
Adding an option such as `--epochs` is one field here and one option declaration in the CLI
(`defcon.cli.main.RUN_OPTIONS`).

The training overrides (`epochs`, `lr`, `batch_size`) apply to the profile they are given
(`applied_to`), so the cache keys (the profile is part of every key) follow the values used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from defcon.errors import DefconError
from defcon.planning.profiles import Profile, get_profile

if TYPE_CHECKING:
    from defcon.catalog import Catalog
    from defcon.engine.data import UserData

TRAINING_ACCEPTED = "--epochs 1..10000, --lr > 0 (at most 10), --batch-size ≥ 1"
KINDS = ("image", "tabular")


class RunSettings(BaseModel):
    """A run's settings; fields are checked in declaration order, so the first wrong one is
    the one reported. A training field left None keeps the profile's value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = Field(
        default="digits", description="a built-in dataset name or a .npz/.csv file"
    )
    seeds: int = Field(default=3, description="seeds to start with", json_schema_extra={"accepted": "≥ 1"})  # fmt: skip
    max_seeds: int | None = Field(
        default=None,
        description="most seeds while a verdict is inconclusive (None: seeds)",
        json_schema_extra={"accepted": "≥ --seeds"},
    )
    seed_start: int = Field(default=0, description="first seed", json_schema_extra={"accepted": "≥ 0"})  # fmt: skip
    epochs: int | None = Field(
        default=None, ge=1, le=10_000, description="training epochs",
        json_schema_extra={"accepted": TRAINING_ACCEPTED},
    )  # fmt: skip
    lr: float | None = Field(
        default=None, gt=0, le=10, description="Adam learning rate",
        json_schema_extra={"accepted": TRAINING_ACCEPTED},
    )  # fmt: skip
    batch_size: int | None = Field(
        default=None, ge=1, description="minibatch size",
        json_schema_extra={"accepted": TRAINING_ACCEPTED},
    )  # fmt: skip
    profile: str = Field(default="quick", description="run sizes (defcon.planning.profiles)")
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    model: str | None = Field(default=None, description="a model factory 'module:function'")
    catalog: Path | None = Field(default=None, description="a user's catalog file")
    configs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="defense settings, {name: {field: value}}"
    )
    data_dir: Path | None = Field(default=None, description="the Fashion-MNIST IDX folder")
    target: str | None = Field(default=None, description="a CSV's label column COL[:VALUE]")
    sensitive: str | None = Field(default=None, description="a CSV's sensitive column COL[:BINS]")
    kind: str | None = Field(
        default=None, description="image or tabular (an ambiguous .npz)",
        json_schema_extra={"accepted": " or ".join(KINDS)},
    )  # fmt: skip

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: int) -> int:
        if seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {seeds}")
        return seeds

    @field_validator("max_seeds")
    @classmethod
    def _max_seeds(cls, max_seeds: int | None, info: Any) -> int | None:
        seeds = info.data.get("seeds")
        if max_seeds is not None and seeds is not None and max_seeds < seeds:
            raise ValueError(f"--max-seeds ({max_seeds}) must be at least --seeds ({seeds})")
        return max_seeds

    @field_validator("seed_start")
    @classmethod
    def _seed_start(cls, seed_start: int) -> int:
        if seed_start < 0:
            raise ValueError(f"--seed-start must be ≥ 0, got {seed_start}")
        return seed_start

    @field_validator("profile")
    @classmethod
    def _profile(cls, profile: str) -> str:
        try:
            get_profile(profile)
        except DefconError as error:
            raise ValueError(str(error)) from None
        return profile

    @field_validator("kind")
    @classmethod
    def _kind(cls, kind: str | None) -> str | None:
        if kind is not None and kind not in KINDS:
            raise ValueError(f"--kind '{kind}' is not accepted; expected {' or '.join(KINDS)}")
        return kind

    @classmethod
    def checked(cls, **values: Any) -> RunSettings:
        """The settings from the CLI's or an API caller's values; the first bad one is a
        `DefconError` naming its option and what is accepted (no I/O: see `resolved`)."""
        try:
            return cls(**values)
        except ValidationError as error:
            raise DefconError(problem_text(error)) from None

    @property
    def most_seeds(self) -> int:
        """The cap on seeds: `max_seeds`, or `seeds` when none was given."""
        return self.seeds if self.max_seeds is None else self.max_seeds

    def overrides_training(self) -> bool:
        return (self.epochs, self.lr, self.batch_size) != (None, None, None)

    def applied_to(self, profile: str | Profile) -> Profile:
        """`profile` with the training overrides; its name unchanged when nothing is overridden."""
        base = get_profile(profile) if isinstance(profile, str) else profile
        if not self.overrides_training():
            return base
        update: dict[str, object] = {}
        if self.epochs is not None:
            update["epochs"] = {**{k: self.epochs for k in base.epochs}, "default": self.epochs}
        if self.lr is not None:
            update["lr"] = self.lr
        if self.batch_size is not None:
            update["batch_size"] = self.batch_size
        return base.model_copy(update=update)

    def trained_with(self) -> Profile:
        """The run's profile with its training overrides."""
        return self.applied_to(self.profile)

    def specs(self) -> Catalog:
        """The catalog the run uses: the installed defenses plus the user's file."""
        from defcon.catalog import load_catalog

        return load_catalog(self.catalog)

    def resolved(
        self, set_values: list[str] | None = None, settings_file: Path | None = None
    ) -> RunSettings:
        """These settings with what needs I/O checked, in the CLI's order: the catalog file,
        a concrete device, the model factory's importable name, and the defense settings
        (`configs`, overridden by a `--settings` file and each `--set`) checked by each
        defense's config. Each wrong value is one `DefconError`."""
        from defcon.engine.defense_settings import defense_settings, validated
        from defcon.engine.devices import resolve_device
        from defcon.engine.models import factory_name

        specs = self.specs()
        device = str(resolve_device(self.device))
        model = factory_name(self.model) if self.model is not None else None
        configs = defense_settings(set_values, settings_file, specs)
        if self.configs:  # the API's settings, each overridden by the CLI's
            merged = {name: dict(values) for name, values in self.configs.items()}
            for name, values in configs.items():
                merged.setdefault(name, {}).update(values)
            configs = validated(merged, specs)
        return self.model_copy(update={"device": device, "model": model, "configs": configs})

    def source(self) -> str | UserData:
        """A built-in dataset's name, or a user's .npz/.csv file read into `UserData` (what
        reading changed in it is kept as notes for the report): `defcon.engine.data.dataset_source`."""
        from defcon.engine.data import dataset_source

        return dataset_source(
            self.dataset, target=self.target, sensitive=self.sensitive, kind=self.kind
        )

    def data_options(self) -> dict[str, str | None]:
        """How a user's data file is read (part of its records' identity)."""
        return {"target": self.target, "sensitive": self.sensitive, "kind": self.kind}


def problem_text(error: ValidationError) -> str:
    """The first problem of a validation as one line: the option, the value, what is accepted."""
    problem = error.errors()[0]
    field = str(problem["loc"][0]) if problem["loc"] else ""
    if problem["type"] == "value_error":
        return str(problem["ctx"]["error"])
    if problem["type"] == "extra_forbidden":
        return f"unknown run setting '{field}'; accepted: {', '.join(RunSettings.model_fields)}"
    option = "--" + field.replace("_", "-")
    extra = RunSettings.model_fields[field].json_schema_extra
    accepted = extra.get("accepted") if isinstance(extra, dict) else None
    described = RunSettings.model_fields[field].description
    return (
        f"{option} {problem['input']} is not accepted ({problem['msg'].lower()}); "
        f"expected {accepted or described}"
    )


def training_used(profile: Profile, dataset: str) -> dict[str, float]:
    """The epochs, learning rate and batch size a dataset's models train with (for the record)."""
    return {
        "epochs": profile.epochs_for(dataset),
        "lr": profile.lr,
        "batch_size": profile.batch_size,
    }
