"""In-training defenses alone vs no defense on Fashion-MNIST and Adult (3 seeds, quick profile).

python benchmarks/in_training.py            # writes benchmarks/results/in_training.md
"""

from stage_benchmark import main

if __name__ == "__main__":
    main(
        [
            "adversarial_training",
            "dp_sgd",
            "group_fairness",
            "backdoor_finetuning",
            "certified_watermark",
        ],
        "In-training defenses: metric and clean accuracy, no defense vs defense",
        "in_training.md",
    )
