"""``fedrl health``: the probe a container's HEALTHCHECK or a pod's liveness probe runs."""

from __future__ import annotations

from pathlib import Path

import typer

from fedrl.cli.console import console


def health(
    target: str = typer.Argument(
        ...,
        help="A server's health URL (http://127.0.0.1:9108/healthz) or a device's --state-dir.",
    ),
    max_age: float = typer.Option(
        60.0, "--max-age", min=1.0, help="A device's last beat may be this many seconds old (a state dir)."
    ),
    timeout: float = typer.Option(5.0, "--timeout", min=0.1, help="Seconds to wait for the server's answer."),
) -> None:
    """Exit 0 when the server or device is healthy, 1 when not, printing one line on why.
    A server is healthy when its /healthz answers 200; a device when its agent beat within
    --max-age seconds and its acting loop runs (both keep beating while the server is away)."""
    if target.startswith(("http://", "https://")):
        healthy, message = _ask_server(target, timeout)
    else:
        from fedrl.edge.health import check

        healthy, message = check(Path(target), max_age)
    console.print(("healthy: " if healthy else "unhealthy: ") + message, highlight=False, soft_wrap=True)
    raise typer.Exit(0 if healthy else 1)


def _ask_server(url: str, timeout: float) -> tuple[bool, str]:
    """Whether ``url`` answers 200, and what it said."""
    import urllib.error  # here, not at the top: every command's start-up would pay for it
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return True, reply.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered {exc.code}: {exc.read().decode(errors='replace').strip()}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url} did not answer: {getattr(exc, 'reason', exc)}"
