"""Pre- and post-training defenses alone vs no defense on Fashion-MNIST and Adult (3 seeds).

python benchmarks/pre_post.py               # writes benchmarks/results/pre_post.md
"""

from stage_benchmark import main

if __name__ == "__main__":
    main(
        [
            "model_watermark",
            "data_watermark",
            "backdoor_pruning",
            "output_watermark",
            "dataset_inference",
            "explanations",
        ],  # fmt: skip
        "Pre- and post-training defenses: metric and clean accuracy, no defense vs defense",
        "pre_post.md",
    )
