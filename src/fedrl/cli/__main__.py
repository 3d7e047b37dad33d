"""``python -m fedrl.cli`` runs the command line."""

from fedrl.cli import run_cli

run_cli()
