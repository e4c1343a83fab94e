"""The ``portgate`` command: ``run`` starts the daemon; ``config check`` validates a file;
``import-miniupnpd`` translates a miniupnpd config (``gateway.migrate``); the admin commands
(list, add, delete, flush, status) talk to a running daemon.

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
    _add_import_arguments(sub)
    ctl.add_ctl_arguments(sub)
    return parser


def _add_import_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "import-miniupnpd",
        help="translate a miniupnpd config to portgate YAML (and import its leases)",
        description="Translate a miniupnpd config to portgate YAML; every option that cannot "
        "be carried over is reported on standard error with its line number.",
    )
    p.add_argument("conf", metavar="MINIUPNPD_CONF", help="e.g. /etc/miniupnpd/miniupnpd.conf")
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="write the YAML to OUT (default: standard output)",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument(
        "--leases",
        nargs="?",
        const="",
        metavar="FILE",
        help="also import miniupnpd's lease file (default: its lease_file=) into portgate's "
        "lease store; portgate must not be running",
    )
    p.add_argument("--wan", metavar="IFACE", help="the WAN interface (instead of ext_ifname=)")
    p.add_argument(
        "--lan",
        metavar="IFACE",
        action="append",
        default=[],
        help="a LAN interface (repeat for more; instead of those of listening_ip=)",
    )
    p.add_argument("--lease-store", metavar="PATH", help="set state.lease_file (and import there)")
    p.add_argument("--control-socket", metavar="PATH", help="set control.socket")


def _lean_daemon(config_path: str) -> None:
    """Keep OpenSSL out of the daemon (see gateway.memory), before its imports; unless metrics
    are on: prometheus_client needs ``ssl``. (A broken config is reported by ``run_daemon``.)"""
    from gateway.config import ConfigError, load_config
    from gateway.memory import keep_openssl_out

    try:
        metrics = load_config(config_path).metrics.enabled
    except ConfigError:
        return
    if not metrics:
        keep_openssl_out()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        _lean_daemon(args.config)
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
    if args.command == "import-miniupnpd":
        from gateway.migrate import run_import

        return run_import(args)
    return ctl.run_ctl(args)


if __name__ == "__main__":
    sys.exit(main())
