"""Engine layer: data, models, devices, seeds, attacks, the defense contracts and registry,
the training loop, probes and the run settings.

Imports the spec and planning layers only.
"""
