"""The ``thetadist`` command: a thin typer layer over the library.

Every failure ends as one line on stderr (and an ``error`` object with ``--json``) and an exit
code from :data:`thetadist.errors.EXIT_CODES`; set ``THETADIST_DEBUG=1`` for a traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from thetadist.cli import chain, demo, fetch, keys, manifest, seed, tickets, tracker, wallet
from thetadist.cli.output import Output
from thetadist.errors import ThetadistError

app = typer.Typer(
    help="Peer-to-peer content distribution: manifests, patches, swarms.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(manifest.app, name="manifest")
app.add_typer(keys.app, name="keys")
app.add_typer(wallet.app, name="wallet")
app.add_typer(chain.contract_app, name="contract")
app.add_typer(chain.pool_app, name="pool")
app.add_typer(chain.earnings_app, name="earnings")
app.add_typer(tickets.app, name="tickets")
app.command(name="fetch")(fetch.fetch)
app.command(name="seed")(seed.seed)
app.command(name="tracker")(tracker.tracker)
app.command(name="demo")(demo.demo)


def main(argv: list[str] | None = None) -> None:
    json_mode = "--json" in (argv if argv is not None else sys.argv[1:])
    try:
        result = app(args=argv, standalone_mode=False)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.TyperException as problem:  # typer's (vendored click's) usage errors
        code = int(getattr(problem, "exit_code", 2))
        message = problem.format_message() if hasattr(problem, "format_message") else str(problem)
        if message.strip():  # empty when typer already printed the help (no arguments)
            Output(json_mode).error("UsageError", message, code)
        sys.exit(code)
    except (KeyboardInterrupt, typer.Abort):
        Output(json_mode).error("Interrupted", "interrupted; rerun the command to resume", 130)
        sys.exit(130)
    except ThetadistError as problem:
        Output(json_mode).error(type(problem).__name__, str(problem), problem.exit_code)
        sys.exit(problem.exit_code)
    except Exception as problem:
        if os.environ.get("THETADIST_DEBUG"):
            raise
        Output(json_mode).error(
            "InternalError",
            f"internal error ({type(problem).__name__}: {problem}); "
            "set THETADIST_DEBUG=1 for a traceback and please report it",
            1,
        )
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)
