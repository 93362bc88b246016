"""``labelprop crowd-server``: run the MTurk-compatible crowd server and manage its workers."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

import typer

from orchestrator.crowd_server.errors import LabelpropError

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

  labelprop crowd-server --host 0.0.0.0 --tls self-signed --data-dir crowd

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
    tls: Optional[str] = typer.Option(
        None, "--tls", metavar="self-signed", rich_help_panel="TLS",
        help="Serve HTTPS with a certificate made here: a local CA in DATA_DIR/tls/ca.pem (give it to boto3 as "
             "verify=, import it into the workers' browsers) signs one for localhost, this machine's host name "
             "and every --tls-hostname."),
    tls_cert: Optional[Path] = typer.Option(
        None, "--tls-cert", metavar="FILE", rich_help_panel="TLS",
        help="Serve HTTPS with this certificate (PEM, chain included)."),
    tls_key: Optional[Path] = typer.Option(
        None, "--tls-key", metavar="FILE", rich_help_panel="TLS", help="The private key of --tls-cert (PEM)."),
    tls_hostname: Optional[list[str]] = typer.Option(
        None, "--tls-hostname", metavar="NAME", rich_help_panel="TLS",
        help="Also put this host name (or IP address) in the self-signed certificate, e.g. annot.lab; "
             "repeatable. The first one is the name in workers' sign-in links."),
    session_days: float = typer.Option(
        14.0, "--session-days", rich_help_panel="Limits",
        help="A worker's sign-in lasts this many days; then they open their link again."),
    max_connections: int = typer.Option(
        256, "--max-connections", rich_help_panel="Limits",
        help="Open connections at most; more are answered 503 and closed."),
    header_timeout: float = typer.Option(
        10.0, "--header-timeout", rich_help_panel="Limits",
        help="Seconds a client has to send a request's headers (slow clients are answered 408)."),
    body_timeout: float = typer.Option(
        30.0, "--body-timeout", rich_help_panel="Limits", help="Seconds a client has to send a request's body."),
) -> None:
    """Start the server (the default action when no subcommand is given)."""
    if ctx.invoked_subcommand is not None:
        return
    from .http_server import Limits, serve
    from .store import parse_money
    from .tls import TlsSetup
    _check_port(port)
    tls_setup = TlsSetup.from_options(tls, tls_cert, tls_key, tls_hostname)
    if not 0 < session_days <= 366:
        raise LabelpropError(f"--session-days must be between 0 and 366, got {session_days}")
    if not 1 <= max_connections <= 100000:
        raise LabelpropError(f"--max-connections must be between 1 and 100000, got {max_connections}")
    for opt, val in (("--header-timeout", header_timeout), ("--body-timeout", body_timeout)):
        if not 0 < val <= 3600:
            raise LabelpropError(f"{opt} must be between 0 and 3600 seconds, got {val}")
    limits = Limits(max_connections=max_connections, header_timeout=header_timeout, body_timeout=body_timeout)
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

        def simulate(url, store, cafile=None):
            return start_pool(url, profiles, pol, store=store, cafile=cafile)
    elif policy or answers:
        raise LabelpropError("--policy/--answers only make sense with --simulate-workers")
    if assets is not None and not assets.is_dir():
        raise LabelpropError(f"--assets {assets}: no such directory")
    serve(_data_dir(data_dir), host, port, quiet=quiet, synchronous=sync.upper(), initial_balance=balance,
          simulate=simulate, assets_dir=assets, limits=limits, tls=tls_setup,
          session_seconds=session_days * 86400)


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
    if not info:
        return "http://127.0.0.1:8765"
    return info.get("public_url") or info["endpoint_url"]


@crowd_app.command("add-worker")
def add_worker_command(
    name: str = typer.Argument(..., help="A unique name for the worker (letters, digits, '-', '_', '.')."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    locale: str = typer.Option("US", "--locale", help="Country (and subdivision), e.g. US, DE, US-WA (for Locale requirements)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Public URL of the server for the link. Default: the running server's, else http://127.0.0.1:8765."),
    new_link: bool = typer.Option(False, "--new-link", help="If the worker exists, issue a new link (the old one and the worker's sign-ins stop working)."),
    valid_days: float = typer.Option(7.0, "--valid-days", help="The link works for this many days (0: no expiry). Each use signs a browser in for --session-days of the server."),
    as_json: bool = typer.Option(False, "--json", help="Print {worker_id, name, signin_url, link_expires} as JSON."),
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
    if not 0 <= valid_days <= 3660:
        raise LabelpropError(f"--valid-days must be between 0 and 3660, got {valid_days}")
    dd = _data_dir(data_dir)
    _existing_data_dir(dd)
    store = Store(dd)
    try:
        try:
            w, token = store.add_worker(name, locale=locale, rotate_if_exists=new_link,
                                        link_seconds=valid_days * 86400 if valid_days > 0 else None)
        except KeyError:
            raise LabelpropError(f"worker {name!r} already exists; use --new-link to replace their sign-in link") from None
    finally:
        store.close()
    url = f"{_base_url(dd, base_url)}/signin/{token}"
    if as_json:
        typer.echo(json.dumps({"worker_id": w.worker_id, "name": w.name, "signin_url": url,
                               "link_expires": w.link_expires}))
    else:
        typer.echo(f"worker {w.name}: id {w.worker_id}\nsign-in link: {url}\n{_link_text(w.link_expires)}")


def _link_text(expires: float | None) -> str:
    from .store import LINK_REVOKED
    if expires is None:
        return "link: no expiry"
    if expires == LINK_REVOKED:
        return "link: revoked"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires))
    return f"link: {'expired' if expires <= time.time() else 'valid until'} {when}"


@crowd_app.command("list-workers")
def list_workers_command(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per worker."),
) -> None:
    """List the workers: id, name, locale, their sign-in link, signed-in sessions, simulated, blocked.

    [bold]Example[/bold]

      labelprop crowd-server list-workers --data-dir crowd
    """
    from .store import LINK_REVOKED, Store
    dd = _data_dir(data_dir)
    _existing_data_dir(dd)
    store = Store(dd)
    try:
        sessions = store.session_counts()
        for w in store.list_workers():
            if as_json:
                typer.echo(json.dumps({"worker_id": w.worker_id, "name": w.name, "locale": w.locale_country,
                                       "link_expires": w.link_expires, "revoked": w.link_expires == LINK_REVOKED,
                                       "sessions": sessions.get(w.worker_id, 0), "simulated": w.simulated,
                                       "blocked": w.blocked_reason is not None}))
                continue
            flags = (" simulated" if w.simulated else "") + (" BLOCKED" if w.blocked_reason else "")
            typer.echo(f"{w.worker_id}  {w.name}  {w.locale_country}  {_link_text(w.link_expires)}  "
                       f"sessions: {sessions.get(w.worker_id, 0)}{flags}")
    finally:
        store.close()


@crowd_app.command("revoke-worker")
def revoke_worker_command(
    worker: str = typer.Argument(..., help="The worker's name or id."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
) -> None:
    """End a worker's sign-in link and sign them out everywhere, at once (also on a running server).

    Their work stays; `add-worker NAME --new-link` lets them in again.  To also keep them from working for you, block them (CreateWorkerBlock).

    [bold]Example[/bold]

      labelprop crowd-server revoke-worker alice --data-dir crowd
    """
    from .store import Store
    dd = _data_dir(data_dir)
    _existing_data_dir(dd)
    store = Store(dd)
    try:
        try:
            w, ended = store.revoke_worker(worker)
        except KeyError:
            raise LabelpropError(f"no worker named {worker!r} (see list-workers)") from None
    finally:
        store.close()
    typer.echo(f"worker {w.name} ({w.worker_id}): sign-in link revoked, {ended} session(s) ended")


@crowd_app.command("rotate-credentials")
def rotate_credentials_command(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
) -> None:
    """Replace the requester key pair; the old key stops working at once (also on a running server).

    Clients that read DATA_DIR/credentials (the AWS profile) pick up the new key when they next create a client; give the new key to anyone else.

    [bold]Example[/bold]

      labelprop crowd-server rotate-credentials --data-dir crowd
    """
    from . import credentials as cm
    dd = _data_dir(data_dir)
    if not cm.credentials_path(dd).is_file():
        raise LabelpropError(f"no requester credentials in {dd} yet (start the server once, or pass --data-dir)")
    c = cm.rotate(dd)
    typer.echo(f"new requester key {c.access_key_id} written to {cm.credentials_path(dd)}; the old key no longer works")


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
                           "credentials_file": str(cm.credentials_path(dd)), "profile": cm.PROFILE,
                           "ca_bundle": info.get("ca_file")}, indent=2))


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
