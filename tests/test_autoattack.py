"""AutoAttack (APGD-CE + APGD-T) is never weaker than PGD-10 on the same model and samples."""

import torch
import torchattacks
from torch import nn

from defcon.engine.attacks import autoattack_correct, autoattack_version


def _trained_mlp(x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(x.shape[1], 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_autoattack_not_weaker_than_pgd10() -> None:
    gen = torch.Generator().manual_seed(1)
    centers = torch.rand(4, 8, generator=gen)
    y = torch.arange(4).repeat(30)
    x = (centers[y] + 0.08 * torch.randn(len(y), 8, generator=gen)).clamp(0, 1)
    model = _trained_mlp(x, y)
    eps = 0.06
    torch.manual_seed(2)
    pgd = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / 10, steps=10, random_start=True)
    x_pgd = pgd(x, y)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
        pgd_acc = (model(x_pgd).argmax(1) == y).float().mean().item()
    aa_acc = autoattack_correct(model, x, y, eps, 4, seed=0, steps=20).float().mean().item()
    assert clean > 0.9  # the model is accurate, so the attacks have something to flip
    assert aa_acc <= pgd_acc
    assert aa_acc < clean  # the attack does something
    assert "torchattacks" in autoattack_version()


def test_a_tabular_model_is_attacked_and_read_in_eval_mode_and_left_unchanged() -> None:
    """The reshaping wrapper starts in eval mode: torchattacks restores the mode it found, and a
    wrapper in training mode switched the model to it after the first attack, so the reading used
    BatchNorm batch statistics and moved the served model's running statistics."""
    import torch
    from torch import nn

    from defcon.engine.attacks import autoattack_correct

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    model.train()
    model(torch.randn(256, 6))  # running statistics away from their initial values
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.rand(64, 6), torch.randint(0, 4, (64,))
    autoattack_correct(model, x, y, eps=0.1, num_classes=4, seed=0, steps=5)
    assert not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
