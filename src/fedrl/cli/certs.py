"""``fedrl certs``: write a development PKI for TLS between the server and its edge agents."""

from __future__ import annotations

from pathlib import Path

import typer

from fedrl.cli.console import console, fail


def certs(
    out: Path = typer.Argument(
        ..., help="Folder to write into (created if missing; existing files are never overwritten)."
    ),
    hosts: list[str] = typer.Option(
        [],
        "--host",
        help="A DNS name or IP clients dial the server by (repeatable); "
        "localhost, 127.0.0.1 and ::1 are always included.",
    ),
    clients: list[str] = typer.Option(
        [], "--client", help="Also make a certificate for this client, for mutual TLS (repeatable)."
    ),
) -> None:
    """Write a development CA, a server certificate and client certificates (PEM) into OUT; keys get mode 600."""
    from fedrl.wire.tls import write_dev_pki

    try:
        paths = write_dev_pki(out, hosts, clients)
    except (FileExistsError, ValueError) as exc:
        fail(str(exc))
    for path in paths:
        console.print(str(path), highlight=False)
    console.print("the CA's private key is not kept: run again into a new folder for a fresh set", highlight=False)
