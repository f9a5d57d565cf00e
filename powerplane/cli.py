"""The ``powerplane`` command line: every command is registered here (``powerplane/commands/``).

``main`` turns every
``PowerplaneError`` into a clear message and its exit status (2 for configuration errors),
so no traceback reaches an operator unless ``--debug`` asks for one.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.markup import escape

from models.errors import ConfigError, PowerplaneError

Handler = Callable[[argparse.Namespace, Console], int]


# ---- parser -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    p = argparse.ArgumentParser(prog="powerplane", description="Power and cooling control plane for AI datacenters.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in command_registrars():
        register(sub)
    return p


Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def command_registrars() -> tuple[Registrar, ...]:
    """Every command, each module's ``register(subparsers)``, in the order ``--help`` lists them.

    powerplane/ is the one place commands are wired (``powerplane/commands/``); the domain
    packages hold no CLI. Explicit on purpose (no plugin discovery by import side effects).
    """
    from powerplane.commands import (
        acl,
        advise,
        agent,
        collect,
        controller,
        dashboards,
        demo,
        hooks,
        jobs,
        plan,
        profiles,
        report,
        site,
        store_writer,
        twin,
    )

    return (demo.register, site.register, twin.register, profiles.register, collect.register,
            store_writer.register, report.register, plan.register, controller.register, agent.register,
            jobs.register, acl.register, advise.register, hooks.register, dashboards.register)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``powerplane`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # soft_wrap: never break an operator's message (a path, a key) across lines.
    console = Console(stderr=False, soft_wrap=True)
    err = Console(stderr=True, soft_wrap=True)
    try:
        return int(args.handler(args, console))
    except ConfigError as exc:
        # Paths, keys and values in the message are the operator's text: never rich markup.
        err.print(f"[bold red]configuration error[/bold red]\n{escape(exc.render())}", highlight=False)
        return exc.exit_code
    except PowerplaneError as exc:
        if args.debug:
            raise
        err.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as exc:
        if args.debug:
            raise
        err.print(f"[bold red]internal error:[/bold red] {type(exc).__name__}: {escape(str(exc))} "
                  "(run with --debug for the traceback)", highlight=False)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
