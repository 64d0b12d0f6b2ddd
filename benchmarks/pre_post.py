"""Pre- and post-training defenses alone vs no defense on Fashion-MNIST and Adult (3 seeds).

python benchmarks/pre_post.py               # writes benchmarks/results/pre_post.md
"""

from stage_benchmark import defenses_at, main

if __name__ == "__main__":
    main(
        defenses_at("pre", "post"),
        "Pre- and post-training defenses: metric and clean accuracy, no defense vs defense",
        "pre_post.md",
    )
