"""`defcon audit` and the HTML report (which embeds an audit's heatmap).

Imports every layer below it; nothing below imports it.
"""
