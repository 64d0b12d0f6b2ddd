"""certified_watermark: the trigger set is learnt (high watermark accuracy) while an independent
model agrees with it only by chance; the parameter-noise step restores the parameters exactly;
a privacy wrapper is refused with a clear error."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from defcon.engine.models import accuracy, arch_for, build_model
from defcon.engine.registry import make_defense
from defcon.engine.training import TrainingRun, train
from defcon.errors import DefconError
from pipeline_stages.in_training.certified_watermark import CertifiedWatermark


@pytest.fixture(scope="module")
def digits_runs(make_env):
    env = make_env()
    independent = train(env, env.dataset.train)
    defense = CertifiedWatermark()
    marked = train(env, env.dataset.train, [defense])
    return env, independent, marked, defense


def _run(env, model: nn.Module) -> TrainingRun:
    split = env.dataset.train
    return TrainingRun(
        model=model,
        optimizer=torch.optim.Adam(model.parameters()),
        loader=split.loader(64),
        env=env,
        train=split,
        epochs=1,
        lr=1e-3,
        batch_size=64,
    )


def test_registry_builds_it() -> None:
    assert isinstance(make_defense("certified_watermark"), CertifiedWatermark)


def test_watermark_is_learnt_and_absent_from_an_independent_model(digits_runs) -> None:
    env, independent, marked, defense = digits_runs
    chance = 1 / env.dataset.num_classes
    assert defense.measure(marked.model, env)["watermark_accuracy"] > 0.9
    assert defense.measure(independent.model, env)["watermark_accuracy"] < chance + 0.15
    test = env.dataset.test
    acc_marked = accuracy(marked.model, test.x, test.y)
    assert acc_marked > accuracy(independent.model, test.x, test.y) - 0.12


def test_measure_on_a_fresh_instance_after_reload(digits_runs) -> None:
    env, _, marked, defense = digits_runs
    reloaded = build_model(marked.arch, seed=99)
    reloaded.load_state_dict(copy.deepcopy(marked.model.state_dict()))
    assert CertifiedWatermark().measure(reloaded, env) == defense.measure(marked.model, env)
    copied = pickle.loads(pickle.dumps(defense))  # process pools pickle defenses after training
    assert copied.measure(reloaded, env) == defense.measure(marked.model, env)


def test_trigger_set_is_rederived_from_seed_and_config(make_env) -> None:
    env = make_env()
    x, y = CertifiedWatermark().trigger_set(env)
    x2, y2 = CertifiedWatermark().trigger_set(env)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (100, *env.dataset.input_shape)
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert set(y.tolist()) <= set(range(env.dataset.num_classes))
    assert len(set(y.tolist())) > 1  # random labels, not one class
    other, _ = CertifiedWatermark().trigger_set(make_env(seed=1))
    assert not torch.equal(x, other)
    assert len(CertifiedWatermark({"trigger_set_size": 7}).trigger_set(env)[1]) == 7


def test_noisy_step_accumulates_gradients_and_restores_parameters(make_env) -> None:
    env = make_env()
    model = build_model(arch_for(env.dataset, width=env.profile.width), env.seed)
    model.train()
    before = copy.deepcopy(model.state_dict())
    defense = CertifiedWatermark({"noise_samples": 2})
    defense.noisy_step(_run(env, model))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. BatchNorm statistics
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_loss_term_leaves_batchnorm_statistics_alone(make_env) -> None:
    env = make_env()
    model = build_model(arch_for(env.dataset, width=env.profile.width), env.seed)
    model.train()
    before = copy.deepcopy(model.state_dict())
    x, y, s = next(iter(env.dataset.train.loader(8)))
    logits = torch.zeros(len(y), env.dataset.num_classes)  # the loop's batch logits
    term = CertifiedWatermark().loss_term(_run(env, model), x, y, s, logits)
    assert term.requires_grad and float(term.detach()) > 0
    buffers = {k for k, _ in model.named_buffers()}
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in buffers)
    assert model.training


def test_privacy_wrapper_is_refused_with_a_clear_error(make_env) -> None:
    from opacus import GradSampleModule

    env = make_env()
    arch = arch_for(env.dataset, width=env.profile.width, norm="group")
    run = _run(env, GradSampleModule(build_model(arch, env.seed)))
    x, y, s = next(iter(env.dataset.train.loader(8)))
    with pytest.raises(DefconError, match="privacy wrapper"):
        CertifiedWatermark().loss_term(run, x, y, s, torch.zeros(8, 10))
    with pytest.raises(DefconError, match="privacy wrapper"):
        CertifiedWatermark().noisy_step(run)


def test_tabular_watermark(make_env) -> None:
    env = make_env("adult")
    defense = CertifiedWatermark()
    marked = train(env, env.dataset.train, [defense])
    independent = train(env, env.dataset.train)
    assert defense.measure(marked.model, env)["watermark_accuracy"] > 0.9
    assert defense.measure(independent.model, env)["watermark_accuracy"] < 0.7  # chance: 0.5
