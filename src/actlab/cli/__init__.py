"""The `actlab` command line (Typer + Rich)."""
