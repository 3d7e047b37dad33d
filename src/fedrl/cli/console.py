"""What every command prints through: the console, and the one-line error that ends a command."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console()


def fail(message: str) -> None:
    """Print ``error: message`` and end the command with exit status 2."""
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)
