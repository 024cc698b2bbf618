"""The ``klarna-flow`` command.

::

    klarna-flow demo                      every path of the lifecycle on a demo SQLite file
    klarna-flow audit PAYMENT_ID          one payment's timeline
    klarna-flow history PAYMENT_ID        the payment at --version N or --at TIME
    klarna-flow export                    the audit trail as JSON Lines
    klarna-flow verify                    check the hash chain of the stored events
    klarna-flow replay                    rebuild the read models from the log
    klarna-flow expire                    expire payments whose time ran out
    klarna-flow reconcile                 resolve payments left AUTHORIZING
    klarna-flow diagram                   the lifecycle as Mermaid or dot
    klarna-flow fake-server               serve a FakeKlarna on loopback
    klarna-flow payments                  list payments (filters, paging)
    klarna-flow show PAYMENT_ID           one payment and its next step
    klarna-flow worker                    expire, reconcile and report, in rounds, until stopped
    klarna-flow unresolved                payments waiting for a person's evidence
    klarna-flow resolve PAYMENT_ID        record that evidence: a transaction, or none

Every command takes ``--db`` (an SQLite path or a ``postgresql://`` URL;
default ``klarna_flow_demo.sqlite``, or ``$KLARNA_FLOW_DB``). Only ``demo``
creates a store; the others refuse a missing file or one that holds no
klarna_flow store, and create no table in it. The read-only commands (audit,
history, export, verify, payments, show, unresolved) open the store read-only through
:meth:`AuditLog.open` and write nothing; replay writes only the read-model
tables. None of these needs a cipher key. expire, reconcile, worker and resolve need the key:
``--key-file``, ``$KLARNA_FLOW_CIPHER_KEY``, or the demo's ``<db>.key``.

Exit codes: 0 success; 1 a finding or failure (verify found tampering, no
such payment, the store or Klarna failed); 2 a usage error (bad arguments, no
database, no key). Errors are one line on stderr, never a traceback. When
the reader of the output goes away (``klarna-flow export | head``), the
command ends quietly with status 141, as Unix tools ended by SIGPIPE do.
"""

from __future__ import annotations

import enum
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import typer
from typer.core import TyperGroup

from klarna_flow._domain.lifecycle import diagram as lifecycle_diagram
from klarna_flow._errors import ConfigurationError, InvalidInput, KlarnaFlowError
from klarna_flow.cli import operations, render, resolving
from klarna_flow.cli.demo import run_demo
from klarna_flow.cli.demo_render import demo_view, print_demo
from klarna_flow.cli.options import (
    DEFAULT_BASE_URL,
    DEFAULT_DB,
    EXIT_FINDING,
    EXIT_USAGE,
    ApiKey,
    BaseUrl,
    Db,
    Json,
    KeyFile,
    PaymentArg,
    payments_at,
)
from klarna_flow.cli.options import audit_log as _audit_log
from klarna_flow.cli.options import print_json as _print_json
from klarna_flow.klarna import KlarnaClient
from klarna_flow.testing import FakeKlarna, FakeKlarnaServer, run_fake_server

__all__ = ["app", "main"]

EXIT_PIPE_CLOSED = 128 + 13  # what a shell reports for a command ended by SIGPIPE


class _Group(TyperGroup):
    """Turns klarna_flow's errors into one line on stderr and an exit code."""

    def invoke(self, ctx: Any) -> Any:  # a typer (vendored click) Context
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # the reader went away (e.g. `| head`): not an error
            _stdout_closed()
            raise typer.Exit(EXIT_PIPE_CLOSED) from None
        except (InvalidInput, ConfigurationError) as e:
            _fail(e, EXIT_USAGE)
        except KlarnaFlowError as e:
            _fail(e, EXIT_FINDING)
        except OSError as e:  # a file that cannot be read or written
            _fail(e, EXIT_FINDING)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as e:
            if hasattr(e, "exit_code") and hasattr(e, "format_message"):
                raise  # a usage error: main() reports it
            # Not klarna_flow's: its message could hold anything (a stored value,
            # a token), so only its type is shown.
            typer.echo(f"klarna-flow: error: unexpected {type(e).__name__}", err=True)
            raise typer.Exit(EXIT_FINDING) from None


def _fail(error: BaseException, code: int) -> None:
    typer.echo(f"klarna-flow: error: {error}", err=True)
    raise typer.Exit(code)


def _stdout_closed() -> None:
    """Point stdout at the null device: its reader is gone.

    What is still buffered for stdout goes there instead, so the
    interpreter's last flush does not fail (and say so) at exit.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file descriptor (e.g. under a test runner)
        pass


app = typer.Typer(
    cls=_Group,
    name="klarna-flow",
    help="Klarna's final-authorization step as an event-sourced, auditable state machine.",
    epilog=(
        "Exit codes: 0 success; 1 a finding or a failure (tampering found, no such payment, "
        "the store or Klarna failed); 2 a usage error (bad arguments, no database, no key)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# -- commands -------------------------------------------------------------------


@app.command()
def demo(db: Db = DEFAULT_DB, as_json: Json = False) -> None:
    """Play Klarna's whole journey against a fake Klarna, one payment per scenario.

    Step-up, Express, tokenization and a token charge, pay-and-tokenize,
    declines, a cancel at Klarna, expiries, a lost answer and the guards,
    recorded on --db (new references each run); shows each payment's final
    state, what happened and the next steps. The tokens are sealed with a key
    kept beside the SQLite file (<db>.key, mode 0600).
    """
    result = run_demo(db)
    if as_json:
        _print_json(demo_view(result))
        return
    print_demo(render.stdout(), result)


@app.command()
def audit(payment_id: PaymentArg, db: Db = DEFAULT_DB, as_json: Json = False) -> None:
    """Show one payment's timeline: every event, its cause, and the state it left.

    Reads the stored events only; needs no cipher key; tokens are masked.
    """
    with _audit_log(db) as log:
        entries = log.trail(payment_id)
    if as_json:
        _print_json([e.as_dict() for e in entries])
    else:
        render.stdout().print(render.audit_table(entries, title=f"payment {payment_id}"))


def _instant(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        msg = f"{text!r} is not an ISO 8601 time (e.g. 2025-01-01T12:00:00Z)"
        raise typer.BadParameter(msg, param_hint="--at") from None


@app.command()
def history(
    payment_id: PaymentArg,
    at: Annotated[
        str | None, typer.Option("--at", help="ISO 8601 time with offset, e.g. 2025-01-01T12:00Z.")
    ] = None,
    version: Annotated[int | None, typer.Option("--version", min=1, help="Event number.")] = None,
    db: Db = DEFAULT_DB,
    as_json: Json = False,
) -> None:
    """Show the payment as it was at --version N or at a time (--at).

    Rebuilt from its stored events; needs no cipher key.
    """
    if (at is None) == (version is None):
        raise typer.BadParameter("give exactly one of --at or --version")
    instant = None if at is None else _instant(at)
    with _audit_log(db) as log:
        payment = log.state_at(payment_id, version=version, at=instant)
    view = render.payment_view(payment)
    if as_json:
        _print_json(view)
    else:
        when = f"version {version}" if version is not None else f"at {at}"
        render.stdout().print(render.payment_table(view, title=f"payment {payment_id} {when}"))


@app.command()
def export(
    payment: Annotated[
        UUID | None, typer.Option("--payment", help="Only this payment (default: all).")
    ] = None,
    out: Annotated[str, typer.Option("--out", help="File to write, or - for stdout.")] = "-",
    db: Db = DEFAULT_DB,
) -> None:
    """Write the audit trail as JSON Lines: one event per line, tokens masked.

    The whole log is streamed a page at a time; needs no cipher key.
    """
    with _audit_log(db) as log:
        if out == "-":
            log.export(sys.stdout, payment)
            return
        with (
            Path(out).open("w", encoding="utf-8") as f,
            render.progress_bar("exporting") as progress,
        ):
            count = log.export(f, payment, progress=progress)
    render.stdout().print(f"{count} audit entries written to {out}")


@app.command()
def verify(
    payment: Annotated[
        UUID | None, typer.Option("--payment", help="Only this payment (default: all).")
    ] = None,
    db: Db = DEFAULT_DB,
    as_json: Json = False,
) -> None:
    """Check the hash chain of the stored events; exit 1 if a record was tampered with.

    Names the first payment and version that was altered, is missing,
    reordered, unreadable or truncated. Needs no cipher key.
    """
    with _audit_log(db) as log, render.progress_bar("verifying") as progress:
        report = log.verify(payment, progress=progress)
    if as_json:
        _print_json(report.as_dict())
    else:
        console = render.stdout()
        checked = f"{report.events_checked} events of {report.payments_checked} payments"
        if report.ok:
            console.print(f"OK: {checked} checked; the chain is intact")
        else:
            first = report.findings[0]
            console.print(
                f"TAMPERED: payment {first.payment_id} version {first.version}: "
                f"{first.problem} ({checked} checked)"
            )
            console.print(render.report_table(report))
    if not report.ok:
        raise typer.Exit(EXIT_FINDING)


@app.command()
def replay(db: Db = DEFAULT_DB, as_json: Json = False) -> None:
    """Rebuild the read models from the whole event log and show the counts.

    Writes only the read-model tables; needs no cipher key (no event is recorded).
    """
    with _audit_log(db, read_only=False) as log:
        with render.progress_bar("replaying") as progress:
            replayed = log.rebuild_read_models(progress=progress)
        counts = log.counts_by_state()
    if as_json:
        _print_json({"events_replayed": replayed, "counts": counts})
    else:
        console = render.stdout()
        console.print(f"replayed {replayed} events")
        console.print(render.counts_table(counts))


@app.command()
def expire(db: Db = DEFAULT_DB, key_file: KeyFile = None, as_json: Json = False) -> None:
    """Expire every payment whose request lifetime or authorization window ran out."""
    with payments_at(db, key_file) as payments:
        expired = payments.expire_overdue()
    if as_json:
        _print_json([str(i) for i in expired])
    elif expired:
        render.stdout().print(render.ids_table(f"{len(expired)} payment(s) expired", expired))
    else:
        render.stdout().print("nothing to expire")


@app.command()
def reconcile(
    *,
    older_than_minutes: Annotated[
        float, typer.Option("--older-than-minutes", min=0, help="Only intents older than this.")
    ] = 5.0,
    api_key: ApiKey = None,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    db: Db = DEFAULT_DB,
    key_file: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Re-send authorizations left AUTHORIZING with their recorded idempotency keys.

    Klarna answers with the original result, so no second transaction is made.
    """
    with (
        KlarnaClient(api_key, base_url=base_url) as client,
        payments_at(db, key_file, klarna=client) as payments,
    ):
        outcomes = payments.reconcile(older_than=timedelta(minutes=older_than_minutes))
    if as_json:
        _print_json(
            [
                {
                    "payment_id": str(o.payment_id),
                    "result": o.result.value,
                    "state": o.state.value,
                    "payment_transaction_id": o.payment_transaction_id,
                    "correlation_id": o.correlation_id,
                }
                for o in outcomes
            ]
        )
    elif outcomes:
        render.stdout().print(render.outcomes_table(outcomes))
    else:
        render.stdout().print("nothing to reconcile")


class DiagramFormat(enum.StrEnum):
    mermaid = "mermaid"
    dot = "dot"


@app.command()
def diagram(
    fmt: Annotated[
        DiagramFormat, typer.Option("--format", help="Mermaid or Graphviz dot.")
    ] = DiagramFormat.mermaid,
) -> None:
    """Print the payment lifecycle (states, triggers, guards) as a diagram."""
    typer.echo(lifecycle_diagram(fmt.value), nl=False)


@app.command("fake-server")
def fake_server(
    host: Annotated[
        str, typer.Option("--host", help="Loopback address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="0 picks a free port.")] = 0,
) -> None:
    """Serve a FakeKlarna on loopback until Ctrl-C (point a KlarnaClient's base_url at it)."""
    fake = FakeKlarna()

    def ready(server: FakeKlarnaServer) -> None:
        typer.echo(
            f"FakeKlarna listening on {server.base_url} "
            f"(API key {fake.api_key!r}, partner account {fake.partner_account_id}); "
            "Ctrl-C stops it"
        )
        sys.stdout.flush()

    run_fake_server(fake, host, port, ready=ready)


app.command("payments")(operations.list_payments)
app.command()(operations.show)
app.command()(operations.worker)
app.command()(resolving.unresolved)
app.command()(resolving.resolve)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``klarna-flow`` script.

    Usage errors are reported as one line (exit 2), like every other error.
    """
    try:
        code = app(args=argv, standalone_mode=False)
    except Exception as e:
        # Typer may bring its own copy of click, so its exceptions are matched
        # by the interface they share (``format_message`` and ``exit_code``).
        if type(e).__name__ == "NoArgsIsHelpError":
            typer.echo(e.ctx.get_help())  # type: ignore[attr-defined]
            sys.exit(2)
        if type(e).__name__ == "Abort":
            typer.echo("klarna-flow: aborted", err=True)
            sys.exit(130)
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        ctx = getattr(e, "ctx", None)
        where = "klarna-flow" + (
            f" {ctx.info_name}" if ctx and ctx.info_name != "klarna-flow" else ""
        )
        typer.echo(f"klarna-flow: usage error: {e.format_message()} (see {where} --help)", err=True)
        sys.exit(e.exit_code)
    try:
        sys.stdout.flush()  # here, not at exit, where a closed pipe could not be handled
    except BrokenPipeError:
        _stdout_closed()
        sys.exit(EXIT_PIPE_CLOSED)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
