"""``python -m fedrl.cli`` runs the command line."""

from fedrl.cli import app

app()
