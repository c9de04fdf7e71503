"""The ``replaystore`` click group: lazy subcommands, one place that turns errors into exit codes."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

# name -> (module, attribute); a command's module is imported only when that command runs, so
# ``replaystore --help`` starts without loading numpy-heavy code.
COMMANDS = {
    "info": (".info", "info"),
    "prune": (".prune", "prune"),
    "compact": (".prune", "compact"),
    "verify": (".verify", "verify"),
    "record": (".record", "record"),
    "sample": (".sample", "sample"),
    "inspect": (".inspect", "inspect"),
    "export": (".transfer", "export"),
    "import": (".transfer", "import_"),
    "merge": (".transfer", "merge"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(module, __package__), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Run 'replaystore COMMAND --help' for a command's options and examples.")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="replaystore")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Reinforcement-learning replay stores on disk: inspect and manage them."""
    ctx.obj = {"debug": debug}


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``replaystore`` script."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        return cli.main(argv, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        # One line that names the bad option or path, and where to read more.
        where = exc.ctx.command_path if exc.ctx else "replaystore"
        click.echo(f"Error: {exc.format_message()} (see '{where} --help')", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except Exception as exc:
        from replaystore import ReplayStoreError

        if debug or not isinstance(exc, ReplayStoreError | OSError):
            raise
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
