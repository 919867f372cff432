"""The ``meshsigner`` command: serve, request, dev, and the policy tools."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from policies.commands import add_policy_commands
from signer.settings import SettingsError, add_flags, resolve


def _serve(args: argparse.Namespace) -> int:
    from signer.serve import serve

    try:
        settings = resolve(args)
    except SettingsError as exc:
        print(f"meshsigner serve: {exc}", file=sys.stderr)
        return 2
    return serve(settings)


def _request(args: argparse.Namespace) -> int:
    from signer.request_client import run_request

    return asyncio.run(run_request(args))


def _dev(args: argparse.Namespace) -> int:
    from signer.dev import run_dev

    return run_dev(args)


def build_parser() -> argparse.ArgumentParser:
    from signer.dev import add_dev_arguments
    from signer.request_client import add_request_arguments

    parser = argparse.ArgumentParser(prog="meshsigner", description="Istio CA front door with YAML policy")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the CA server (flags follow istio-csr; env MESHSIGNER_<FLAG>)")
    add_flags(serve)
    serve.set_defaults(func=_serve)
    request = commands.add_parser("request", help="request a workload certificate like Istio's agent")
    add_request_arguments(request)
    request.set_defaults(func=_request)
    dev = commands.add_parser("dev", help="run on the embedded default (local CA, dev tokens) and issue once")
    add_dev_arguments(dev)
    dev.set_defaults(func=_dev)
    add_policy_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
