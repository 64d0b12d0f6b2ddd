"""The benchmark: tasks run in a pool or on Ray, its results page (RESULTS.md) and the
process lifeline.

Imports the layers below it; nothing below imports it.
"""
