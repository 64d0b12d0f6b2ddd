"""How models are trained for a run: the user's epochs, learning rate and batch size.

A profile sizes a run for a built-in dataset; a user's own data needs the training that fits it.
`RunSettings` is the one value the CLI options (`--epochs`, `--lr`, `--batch-size`) and the API
share: it overrides the profile it is applied to, so the cache keys (the profile is part of
every key) follow the values used.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from defcon.errors import DefconError
from defcon.profiles import Profile, get_profile


class RunSettings(BaseModel):
    """Training overrides; a field left None keeps the profile's value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int | None = Field(default=None, ge=1, le=10_000, description="training epochs")
    lr: float | None = Field(default=None, gt=0, le=10, description="Adam learning rate")
    batch_size: int | None = Field(default=None, ge=1, description="minibatch size")

    @classmethod
    def checked(
        cls, epochs: int | None = None, lr: float | None = None, batch_size: int | None = None
    ) -> RunSettings:
        """Build from CLI values; a bad one is a `DefconError` naming what is accepted."""
        try:
            return cls(epochs=epochs, lr=lr, batch_size=batch_size)
        except ValidationError as error:
            problem = error.errors()[0]
            option = "--" + str(problem["loc"][0]).replace("_", "-")
            raise DefconError(
                f"{option} {problem['input']} is not accepted ({problem['msg'].lower()}); "
                "expected --epochs 1..10000, --lr > 0 (at most 10), --batch-size ≥ 1"
            ) from None

    def is_default(self) -> bool:
        return self.epochs is None and self.lr is None and self.batch_size is None

    def applied_to(self, profile: str | Profile) -> Profile:
        """`profile` with these overrides; its name unchanged when nothing is overridden."""
        base = get_profile(profile) if isinstance(profile, str) else profile
        if self.is_default():
            return base
        update: dict[str, object] = {}
        if self.epochs is not None:
            update["epochs"] = {**{k: self.epochs for k in base.epochs}, "default": self.epochs}
        if self.lr is not None:
            update["lr"] = self.lr
        if self.batch_size is not None:
            update["batch_size"] = self.batch_size
        return base.model_copy(update=update)


def training_used(profile: Profile, dataset: str) -> dict[str, float]:
    """The epochs, learning rate and batch size a dataset's models train with (for the record)."""
    return {
        "epochs": profile.epochs_for(dataset),
        "lr": profile.lr,
        "batch_size": profile.batch_size,
    }
