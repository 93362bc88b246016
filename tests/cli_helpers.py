"""Run the campaign commands in-process, the way ``orchestrator.cli.app.main`` does:
a :class:`LabelpropError` becomes exit status 2 and one ``labelprop: error:`` line."""
from __future__ import annotations

from dataclasses import dataclass

import typer
from typer.testing import CliRunner

from orchestrator.cli import campaign as cli_campaign
from orchestrator.errors import LabelpropError


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def campaign_app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    cli_campaign.register(app)
    return app


def run_cli(*args) -> CliResult:
    r = CliRunner().invoke(campaign_app(), [str(a) for a in args])
    if isinstance(r.exception, LabelpropError):
        return CliResult(2, r.stdout, f"labelprop: error: {r.exception}")
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return CliResult(r.exit_code, r.stdout, r.stderr)
