"""In-training defenses alone vs no defense on Fashion-MNIST and Adult (3 seeds, quick profile).

python benchmarks/in_training.py            # writes benchmarks/results/in_training.md
"""

from stage_benchmark import defenses_at, main

if __name__ == "__main__":
    main(
        defenses_at("in"),
        "In-training defenses: metric and clean accuracy, no defense vs defense",
        "in_training.md",
    )
