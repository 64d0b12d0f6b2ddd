"""defcon: plan and verify combinations of machine-learning defenses without conflicts."""

__version__ = "0.1.0"
