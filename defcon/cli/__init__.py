"""The typer CLI and its rich views: the top layer."""

from defcon.cli.main import app

__all__ = ["app"]
