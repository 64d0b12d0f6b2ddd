"""How many epochs a dataset's undefended model needs to pass the convergence check.

    python benchmarks/convergence.py --dataset fmnist --epochs 6,10,14 --seeds 0,1,2,3,4

Trains the undefended model of the profile (clean, and under the dataset's BadNets poisoner, the
scenario of every poisoning combination) for each epoch count and seed, as the composer trains
it (`defcon.engine.training.train`), and prints per epoch count and scenario the last epoch's
validation gain over the best before it, the model's own swing, clean test accuracy, and what
the verdict rule's convergence check (`defcon.measure.reliability.underfit_reasons`, the same
function) says over the seeds. A record whose undefended model fails it is `unreliable`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

from defcon.engine.attacks import BadNets
from defcon.engine.data import load_dataset
from defcon.engine.defense import Environment
from defcon.engine.models import accuracy
from defcon.engine.training import train
from defcon.measure.reliability import underfit_reasons
from defcon.planning.profiles import get_profile


def undefended(
    dataset: str, profile: str, seed: int, epochs: int, poisoned: bool
) -> tuple[dict[str, float], float, int, float]:
    """One undefended model: its training facts, clean test accuracy, validation rows and the
    majority-class rate of the test split."""
    prof = get_profile(profile)
    data = load_dataset(
        dataset, seed=seed, max_train=prof.train_cap(dataset), max_eval=prof.eval_cap(dataset)
    )
    env = Environment(dataset=data, seed=seed, profile=prof)
    split = data.train
    if poisoned:
        env.poisoner = BadNets.for_dataset(data, seed)
        split, _ = env.poisoner.poison(data.train, seed)
        env.train_data = split
    trained = train(env, split, epochs=epochs)
    counts = data.test.y.bincount()
    majority = float(counts.max()) / float(counts.sum())
    clean = accuracy(trained.model, data.test.x, data.test.y)
    return trained.record, clean, len(data.val), majority


def report(dataset: str, profile: str, epochs: list[int], seeds: list[int]) -> Iterator[str]:
    """One line per epoch count and scenario, as each is measured."""
    yield (
        f"{dataset}, profile {profile}, seeds {seeds}: per seed last-epoch validation gain / "
        "swing, clean test accuracy; then the convergence check over the seeds"
    )
    for count in epochs:
        for poisoned in (False, True):
            started = time.perf_counter()
            runs = [undefended(dataset, profile, s, count, poisoned) for s in seeds]
            facts = [run[0] for run in runs]
            clean = [run[1] for run in runs]
            reasons = underfit_reasons(facts, clean, runs[0][3], runs[0][2])
            per_seed = ", ".join(
                f"{f['training.last_epoch_val_gain']:+.3f}/{f['training.val_swing']:.3f} ({c:.3f})"
                for f, c in zip(facts, clean, strict=True)
            )
            verdict = "converged" if not reasons else "NOT converged: " + reasons[0][:90]
            scenario = "BadNets-poisoned" if poisoned else "clean"
            yield (
                f"  {count} epochs, {scenario}: {per_seed} → {verdict} "
                f"[{time.perf_counter() - started:.0f} s]"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fmnist")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--epochs", default="6,10,14")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    args = parser.parse_args()
    epochs = [int(e) for e in args.epochs.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    for line in report(args.dataset, args.profile, epochs, seeds):
        print(line, flush=True)


if __name__ == "__main__":
    main()
