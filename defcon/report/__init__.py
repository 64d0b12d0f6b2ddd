"""Report layer: records rendered for people (a composition's table and chart, the typed
Report and its Markdown / model card / CycloneDX renderings, technique scores, the
regulatory crosswalk, docs/defenses.md).

Reads records; never imports the measure layer, audit, bench or the CLI.
"""
