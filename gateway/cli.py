"""The ``portgate`` command: ``run`` starts the daemon; ``config check`` validates a file; the
admin commands (list, add, delete, flush, status) talk to a running daemon.

Kept light: the admin commands must start fast, so the daemon's imports (Twisted, pyroute2)
happen only for ``run``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway import ctl


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portgate",
        description="Port-mapping gateway: UPnP IGD, NAT-PMP and PCP over one table.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", required=True, metavar="FILE", help="YAML configuration")
    check = sub.add_parser("config", help="configuration tools")
    check_sub = check.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check_file = check_sub.add_parser("check", help="validate FILE and print the effective config")
    check_file.add_argument("file", metavar="FILE")
    ctl.add_ctl_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        from gateway.daemon import run_daemon

        return run_daemon(args.config)
    if args.command == "config":
        from gateway.config import ConfigError, dump_config, load_config

        try:
            config = load_config(args.file)
        except ConfigError as error:
            print(f"portgate: {error}", file=sys.stderr)
            return 2
        sys.stdout.write(dump_config(config))
        return 0
    return ctl.run_ctl(args)


if __name__ == "__main__":
    sys.exit(main())
