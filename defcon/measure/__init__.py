"""Measure layer: the model cache, pipelines, arm comparisons, the composer and what it
reads off trained models (notices, reliability), saved pipelines, the pilot technique.

Imports the spec, planning and engine layers and `defcon.risks`.
"""
