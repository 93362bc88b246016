"""``labelprop crowd-server``: run the MTurk-compatible crowd server and manage its workers."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

import typer

from orchestrator.errors import LabelpropError

DATA_DIR_HELP = "Server data directory (database, requester credentials). Default: $LABELPROP_CROWD_DATA or ./crowd-server-data."

crowd_app = typer.Typer(
    name="crowd-server",
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    help="""Run the bundled MTurk-compatible crowd server (MTurk closed on 2026-09-30).

It speaks the MTurk Requester API (2017-01-17, SigV4-signed JSON) so boto3's `mturk` client works unchanged with `endpoint_url`, and serves the worker web pages at `/` for your own annotators. The requester key pair is created on first start in DATA_DIR/credentials (AWS format, profile `labelprop-crowd`). Campaigns that post to it upload their HIT images to it, so they load for every worker.

[bold]Examples[/bold]

  labelprop crowd-server --port 8765 --data-dir crowd

  labelprop crowd-server add-worker alice --data-dir crowd   # a sign-in link

  labelprop crowd-server --port 8765 --data-dir crowd \\
      --simulate-workers "ann:accuracy=0.95;bob:spammer" --answers truth.json

  eval "$(labelprop crowd-server credentials --data-dir crowd --env)"
""",
)


def _data_dir(value: Optional[Path]) -> Path:
    from .store import default_data_dir
    return Path(value) if value is not None else default_data_dir()


def _check_port(port: int) -> int:
    if not 0 <= port <= 65535:
        raise LabelpropError(f"--port must be between 0 and 65535, got {port}")
    return port


@crowd_app.callback()
def serve_command(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(8765, "--port", help="TCP port; 0 picks a free one (see DATA_DIR/server.json)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    simulate_workers: Optional[str] = typer.Option(
        None, "--simulate-workers", metavar="SPEC",
        help="Also run simulated workers, e.g. 'ann:accuracy=0.95,seconds=1;bob:spammer;cy:accuracy=0.6'. "
             "Keys: accuracy, seconds, spammer, spam_answer, max_hits, seed, tests."),
    policy: Optional[str] = typer.Option(
        None, "--policy", metavar="MODULE:FUNCTION",
        help="Python callable giving simulated workers the true answers: f(task) -> {field: value}."),
    answers: Optional[Path] = typer.Option(
        None, "--answers", metavar="FILE.json", help="JSON file of true answers {QuestionIdentifier: answer}."),
    balance: str = typer.Option("10000.00", "--balance", help="Starting account balance in USD (first start only)."),
    sync: str = typer.Option("full", "--sync", help="SQLite synchronous mode: full (survives power loss) or normal."),
    quiet: bool = typer.Option(False, "--quiet", help="No per-request log lines on stderr."),
    assets: Optional[Path] = typer.Option(
        None, "--assets", metavar="DIR",
        help="Serve the files under DIR publicly at /assets/... (no sign-in): the mask overlay images that "
             "labelprop publishes for HITs when [crowd.assets] store = \"local\"."),
) -> None:
    """Start the server (the default action when no subcommand is given)."""
    if ctx.invoked_subcommand is not None:
        return
    from .http_server import serve
    from .store import parse_money
    _check_port(port)
    try:
        parse_money(balance)
    except ValueError:
        raise LabelpropError(f"--balance must be an amount like 100.00, got {balance!r}") from None
    if sync.lower() not in ("full", "normal"):
        raise LabelpropError(f"--sync must be 'full' or 'normal', got {sync!r}")
    if policy and answers:
        raise LabelpropError("give --policy or --answers, not both")
    simulate = None
    if simulate_workers:
        from .simulated_workers import load_policy, parse_workers_spec, start_pool
        profiles = parse_workers_spec(simulate_workers)
        pol = load_policy(str(answers) if answers else policy)
        if pol is None and not all(p.spammer for p in profiles):
            raise LabelpropError("--simulate-workers needs --policy MODULE:FUNCTION or --answers FILE.json "
                                 "(unless every worker is a spammer)")

        def simulate(url, store):
            return start_pool(url, profiles, pol, store=store)
    elif policy or answers:
        raise LabelpropError("--policy/--answers only make sense with --simulate-workers")
    if assets is not None and not assets.is_dir():
        raise LabelpropError(f"--assets {assets}: no such directory")
    serve(_data_dir(data_dir), host, port, quiet=quiet, synchronous=sync.upper(), initial_balance=balance,
          simulate=simulate, assets_dir=assets)


def _existing_data_dir(dd: Path) -> None:
    """A command that manages a server's data must not create an empty data directory by mistake."""
    from .store import DB_NAME
    if not dd.is_dir() or not (dd / DB_NAME).is_file():
        raise LabelpropError(f"{dd}: no crowd server data directory here (no {DB_NAME}); start the server "
                             f"once with `labelprop crowd-server --data-dir {dd}`, or pass the --data-dir it uses")


def _base_url(data_dir: Path, base_url: Optional[str]) -> str:
    from .store import read_server_info
    if base_url:
        return base_url.rstrip("/")
    info = read_server_info(data_dir)
    return info["endpoint_url"] if info else "http://127.0.0.1:8765"


@crowd_app.command("add-worker")
def add_worker_command(
    name: str = typer.Argument(..., help="A unique name for the worker (letters, digits, '-', '_', '.')."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    locale: str = typer.Option("US", "--locale", help="Country (and subdivision), e.g. US, DE, US-WA (for Locale requirements)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Public URL of the server for the link. Default: the running server's, else http://127.0.0.1:8765."),
    new_link: bool = typer.Option(False, "--new-link", help="If the worker exists, issue a new link (the old one stops working)."),
    as_json: bool = typer.Option(False, "--json", help="Print {worker_id, name, signin_url} as JSON."),
) -> None:
    """Add a worker and print their personal sign-in link (keep it secret: it is their password).

    [bold]Examples[/bold]

      labelprop crowd-server add-worker alice --data-dir crowd

      labelprop crowd-server add-worker alice --data-dir crowd --new-link \\
          --base-url http://annot.lab:8765
    """
    import re
    from .store import Store
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise LabelpropError(f"worker name must be 1-64 letters, digits, '-', '_' or '.', got {name!r}")
    if not re.fullmatch(r"[A-Za-z]{2}(-[A-Za-z0-9]{1,3})?", locale):
        raise LabelpropError(f"--locale must look like US or US-WA, got {locale!r}")
    dd = _data_dir(data_dir)
    _existing_data_dir(dd)
    store = Store(dd)
    try:
        try:
            w, token = store.add_worker(name, locale=locale, rotate_if_exists=new_link)
        except KeyError:
            raise LabelpropError(f"worker {name!r} already exists; use --new-link to replace their sign-in link") from None
    finally:
        store.close()
    url = f"{_base_url(dd, base_url)}/signin/{token}"
    if as_json:
        typer.echo(json.dumps({"worker_id": w.worker_id, "name": w.name, "signin_url": url}))
    else:
        typer.echo(f"worker {w.name}: id {w.worker_id}\nsign-in link: {url}")


@crowd_app.command("list-workers")
def list_workers_command(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
) -> None:
    """List the workers (id, name, locale, simulated, blocked).

    [bold]Example[/bold]

      labelprop crowd-server list-workers --data-dir crowd
    """
    from .store import Store
    store = Store(_data_dir(data_dir))
    try:
        for w in store.list_workers():
            flags = (" simulated" if w.simulated else "") + (" BLOCKED" if w.blocked_reason else "")
            typer.echo(f"{w.worker_id}  {w.name}  {w.locale_country}{flags}")
    finally:
        store.close()


@crowd_app.command("credentials")
def credentials_command(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    env: bool = typer.Option(False, "--env", help="Print shell exports for boto3 instead of JSON."),
) -> None:
    """Show the requester credentials and endpoint (creates the key pair if missing).

    [bold]Examples[/bold]

      labelprop crowd-server credentials --data-dir crowd

      eval "$(labelprop crowd-server credentials --data-dir crowd --env)"
    """
    from . import credentials as cm
    from .store import prepare_data_dir, read_server_info
    dd = prepare_data_dir(_data_dir(data_dir))
    c = cm.load_or_create(dd)
    info = read_server_info(dd) or {}
    if env:
        typer.echo(f"export AWS_SHARED_CREDENTIALS_FILE={cm.credentials_path(dd)}\n"
                   f"export AWS_CONFIG_FILE={cm.config_path(dd)}\nexport AWS_PROFILE={cm.PROFILE}")
        return
    typer.echo(json.dumps({"aws_access_key_id": c.access_key_id, "aws_secret_access_key": c.secret_access_key,
                           "region_name": c.region, "endpoint_url": info.get("endpoint_url"),
                           "credentials_file": str(cm.credentials_path(dd)), "profile": cm.PROFILE}, indent=2))


@crowd_app.command("simulate")
def simulate_command(
    workers: str = typer.Option(..., "--workers", metavar="SPEC", help="Worker spec, e.g. 'ann:accuracy=0.9,seconds=1;bob:spammer'."),
    policy: Optional[str] = typer.Option(None, "--policy", metavar="MODULE:FUNCTION", help="Python callable giving the true answers."),
    answers: Optional[Path] = typer.Option(None, "--answers", metavar="FILE.json", help="JSON file of true answers {QuestionIdentifier: answer}."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    url: Optional[str] = typer.Option(None, "--url", help="Server URL. Default: the running server's (DATA_DIR/server.json)."),
    duration: float = typer.Option(0.0, "--duration", help="Stop after this many seconds (0: until Ctrl-C)."),
) -> None:
    """Run simulated workers against a running server (same endpoints as the browser).

    [bold]Examples[/bold]

      labelprop crowd-server simulate --data-dir crowd \\
          --workers "ann:accuracy=0.95;bob:spammer" --answers truth.json

      labelprop crowd-server simulate --data-dir crowd --workers "ann" \\
          --policy mypkg.truth:answer --duration 60
    """
    from .simulated_workers import start_pool
    from .store import read_server_info
    if policy and answers:
        raise LabelpropError("give --policy or --answers, not both")
    dd = _data_dir(data_dir)
    if url is None:
        info = read_server_info(dd)
        if info is None:
            raise LabelpropError(f"no running server found in {dd} (no server.json); start it or pass --url")
        url = info["endpoint_url"]
    pool = start_pool(url, workers, str(answers) if answers else policy, data_dir=dd)
    t0 = time.time()
    try:
        while duration <= 0 or time.time() - t0 < duration:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        pool.stop()
    typer.echo(json.dumps(pool.stats(), indent=2))


@crowd_app.command("add-funds")
def add_funds_command(
    amount: str = typer.Argument(..., help="USD to add, e.g. 250.00"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
) -> None:
    """Add money to the requester balance that approvals draw from.

    [bold]Example[/bold]

      labelprop crowd-server add-funds 250.00 --data-dir crowd
    """
    from .store import Store, format_money, parse_money
    try:
        cents = parse_money(amount)
    except ValueError:
        raise LabelpropError(f"amount must look like 250.00, got {amount!r}") from None
    store = Store(_data_dir(data_dir))
    try:
        typer.echo(f"balance: {format_money(store.add_funds(cents))}")
    finally:
        store.close()


def register(app: typer.Typer) -> None:
    """Add the ``crowd-server`` command group to the labelprop CLI."""
    app.add_typer(crowd_app, name="crowd-server")


def main() -> None:
    """``python -m orchestrator.crowd_server``: the same commands, without the rest of labelprop."""
    import sys
    try:
        crowd_app(prog_name="labelprop crowd-server")
    except LabelpropError as exc:
        typer.secho(f"labelprop: error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
