"""Report layer: records rendered for people (a composition's table and chart, the typed
Report and its Markdown / model card / CycloneDX renderings, technique scores, the
regulatory crosswalk, docs/defenses.md).

It reads records (and defense settings), never the machinery that measures; audit, bench and
the CLI print through it, so it lies below them.
"""
