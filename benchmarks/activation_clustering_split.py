"""Why activation clustering removes too little poison on a dataset: per seed and label, the
2-means split of the filter network's activations, the clean gate, and where the poison went.

    python benchmarks/activation_clustering_split.py --dataset fmnist --seeds 0,1

For each label holding poison or a cluster the relative-size rule would flag, it prints the
smaller cluster's share of the label, the share of the defender's clean rows that fall in it
(the clean gate removes it only below `clean_ratio` × that share), and how many of the label's
poisoned rows it holds, under both reductions (ICA, the paper's, and PCA).
"""

from __future__ import annotations

import argparse

import numpy as np

from defcon.engine.attacks import BadNets
from defcon.engine.data import load_dataset
from defcon.engine.defense import Environment
from defcon.planning.profiles import get_profile
from pipeline_stages.pre_training import poison_filter
from pipeline_stages.pre_training.activation_clustering import ActivationClustering, split_label


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
        for reduction in ("ica", "pca"):
            halves = split_label(
                reps[rows], reduction, cfg.components, defense.cluster_seed(env, label)
            )
            planted = int(poison[rows].sum())
            if planted or halves.share <= cfg.size_threshold:
                clean_in = halves.clean_share(clean_reps[clean_labels == label])
                caught = int(poison[rows][halves.assigned == halves.small].sum())
                gate = cfg.clean_ratio * halves.share
                lines.append(
                    f"  label {label} {reduction}: {len(rows)} rows, {planted} poisoned; smaller "
                    f"cluster {halves.share:.3f} of the label (flagged at ≤ "
                    f"{cfg.size_threshold}), clean rows in it {clean_in:.3f} (gate ≤ "
                    f"{gate:.3f}), holds {caught} of the {planted} poisoned"
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
