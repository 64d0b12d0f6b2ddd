"""The benchmark: tasks run in a pool or on Ray, its results page (RESULTS.md) and the
process lifeline.

Imports every layer below it but audit; nothing below imports it.
"""
