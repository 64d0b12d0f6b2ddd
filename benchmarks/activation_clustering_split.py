"""Why activation clustering removes too little poison on a dataset: per seed and label, the
2-means split of the filter network's activations, the clean gate, and where the poison went.

    python benchmarks/activation_clustering_split.py --dataset fmnist --seeds 0,1

For each label holding poison or losing rows, it prints every split the defense makes (the rule
as configured, under both reductions: ICA, the paper's, and PCA): the cluster the defender's
clean rows avoid most, its share of the rows split, the clean rows' share in it over that share
(removed at ≤ `clean_ratio`), and how many of the label's poisoned rows it holds; then the
paper's relative-size rule on the same label for comparison.
"""

from __future__ import annotations

import argparse

import numpy as np

from defcon.engine.attacks import BadNets
from defcon.engine.data import load_dataset
from defcon.engine.defense import Environment
from defcon.planning.profiles import get_profile
from pipeline_stages.pre_training import poison_filter
from pipeline_stages.pre_training.activation_clustering import ActivationClustering, label_steps


def split_report(dataset: str, seed: int, profile: str) -> list[str]:
    prof = get_profile(profile)
    data = load_dataset(
        dataset, seed=seed, max_train=prof.train_cap(dataset), max_eval=prof.eval_cap(dataset)
    )
    env = Environment(dataset=data, seed=seed, profile=prof)
    env.poisoner = BadNets.for_dataset(env.dataset, env.seed)
    env.train_data, chosen = env.poisoner.poison(env.dataset.train, env.seed)
    poison_filter._MEMO.clear()
    defense = ActivationClustering()
    cfg = defense.config
    reps, labels, clean_reps, clean_labels = defense.labelled_representations(env.train_data, env)
    poison = np.zeros(len(labels), dtype=bool)
    poison[chosen.numpy()] = True
    lines = [f"{dataset} seed {seed}: {len(labels)} training rows, {poison.sum()} poisoned"]
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        planted = int(poison[rows].sum())
        reference = clean_reps[clean_labels == label]
        for reduction in ("ica", "pca"):
            for rule, config in (
                ("clean", cfg.model_copy(update={"reduction": reduction})),
                ("paper", cfg.model_copy(update={"reduction": reduction, "clean_ratio": None})),
            ):
                steps = label_steps(reps[rows], reference, config, defense.cluster_seed(env, label))
                if not planted and not any(step.removed for step in steps):
                    continue
                for number, step in enumerate(steps, 1):
                    rule_said = (
                        f"clean/train {step.clean_ratio:.3f} (removed at ≤ {cfg.clean_ratio})"
                        if rule == "clean"
                        else f"removed at a share ≤ {cfg.size_threshold}"
                    )
                    lines.append(
                        f"  label {label} {reduction} {rule} split {number}: {len(step.rows)} rows,"
                        f" {planted} poisoned; cluster of {step.share:.3f}, {rule_said}, "
                        f"{'removed' if step.removed else 'kept'}, holds "
                        f"{int(poison[rows][step.suspect_rows].sum())} of the {planted} poisoned"
                    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fmnist")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--profile", default="quick")
    args = parser.parse_args()
    for seed in (int(s) for s in args.seeds.split(",")):
        print("\n".join(split_report(args.dataset, seed, args.profile)), flush=True)


if __name__ == "__main__":
    main()
