"""Defenses grouped by pipeline stage: one module (and one spec file) per defense."""
