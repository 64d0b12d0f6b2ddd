"""The profile's membership regime: applied to every arm of a run that measures membership."""

from __future__ import annotations

import pytest

from defcon.measure.composer import Composer
from defcon.planning.profiles import PROFILES, MembershipRegime, get_profile


def test_regime_replaces_only_its_datasets_caps_and_epochs() -> None:
    quick = get_profile("quick")
    assert set(quick.membership) == {"fmnist", "adult"}
    leaky = quick.membership_regime("adult")
    assert leaky.train_cap("adult") == quick.membership["adult"].max_train
    assert leaky.epochs_for("adult") == quick.membership["adult"].epochs
    assert leaky.train_cap("fmnist") == quick.train_cap("fmnist")
    assert leaky.epochs_for("fmnist") == quick.epochs_for("fmnist")
    assert quick.membership_regime("compas") is quick  # none declared: unchanged
    assert PROFILES["tiny"].membership_regime("adult") is PROFILES["tiny"]


def test_bad_regime_is_refused() -> None:
    with pytest.raises(ValueError, match="max_train"):
        MembershipRegime(max_train=0, epochs=3)


def test_composer_trains_in_the_regime_only_while_membership_is_measured(tmp_path) -> None:
    base = get_profile("tiny")
    profile = base.model_copy(
        update={"membership": {"digits": MembershipRegime(max_train=100, epochs=2)}}
    )
    composer = Composer("digits", profile=profile, cache_dir=tmp_path)
    assert composer.measures_membership(["dp_sgd"])
    assert not composer.measures_membership(["adversarial_training"])
    full = len(composer.dataset(0).train)
    key = composer.runner.base_key(0)
    with composer.membership_regime(composer.measures_membership(["dp_sgd"])):
        assert len(composer.dataset(0).train) == 100
        assert composer.profile.epochs_for("digits") == 2
        assert composer.runner.base_key(0) != key  # its models never mix with the others
    assert len(composer.dataset(0).train) == full > 100
    assert composer.runner.base_key(0) == key
    with composer.membership_regime(False):
        assert len(composer.dataset(0).train) == full
