"""The ``meshsigner`` command: serve, request, dev, and the policy tools.

Only the chosen command's modules are imported (start-up time: ``serve`` is what replicas run, and it must not pay
for the policy tooling, the request client or the dev token issuer). Each command's arguments are added only when
that command was asked for; ``meshsigner --help`` lists them all without loading any.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any


def _serve(args: argparse.Namespace) -> int:
    from signer.serve import serve
    from signer.settings import SettingsError, resolve

    try:
        settings = resolve(args)
    except SettingsError as exc:
        print(f"meshsigner serve: {exc}", file=sys.stderr)
        return 2
    return serve(settings)


def _request(args: argparse.Namespace) -> int:
    import asyncio

    from signer.request_client import run_request

    return asyncio.run(run_request(args))


def _dev(args: argparse.Namespace) -> int:
    from signer.dev import run_dev

    return run_dev(args)


LIVE_READ_ATTEMPTS = 5


def _live_policy_objects(kubeconfig: str, label_selector: str) -> list[dict[str, Any]]:
    """The policy objects of the cluster ``kubeconfig`` points at, for ``meshsigner policy lint|explain
    --kubeconfig`` (the policy tools read no cluster themselves: policies never import bridge)."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from bridge.kube import KubeClient, KubeMetrics, KubeOptions, KubeUnavailable
    from bridge.policy_objects import read_policy_objects

    async def read() -> list[dict[str, Any]]:
        for attempt in range(LIVE_READ_ATTEMPTS):  # a retryable answer (429, 503) is retried a few times
            try:
                return await read_policy_objects(kube, label_selector=label_selector)
            except KubeUnavailable:
                if attempt == LIVE_READ_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(1.0)
        raise AssertionError("unreachable")

    kube = KubeClient(KubeOptions(kubeconfig=kubeconfig), KubeMetrics(CollectorRegistry()))
    try:
        return asyncio.run(read())
    finally:
        kube.close()


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    from signer.settings import add_flags

    add_flags(parser)


def _request_arguments(parser: argparse.ArgumentParser) -> None:
    from signer.request_client import add_request_arguments

    add_request_arguments(parser)


def _dev_arguments(parser: argparse.ArgumentParser) -> None:
    from signer.dev import add_dev_arguments

    add_dev_arguments(parser)


_Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
_COMMANDS: dict[str, _Command] = {
    "serve": ("run the CA server (flags follow istio-csr; env MESHSIGNER_<FLAG>)", _serve_arguments, _serve),
    "request": ("request a workload certificate like Istio's agent", _request_arguments, _request),
    "dev": ("run on the embedded default (local CA, dev tokens) and issue once", _dev_arguments, _dev),
}
_POLICY_HELP = "lint, test and explain YAML identity policies offline"


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: only the command it names gets its arguments (and its imports). Without ``argv``,
    every command gets them, for callers that want the whole CLI (documentation, tests)."""
    chosen = None if argv is None else _chosen_command(argv)
    everything = argv is None
    parser = argparse.ArgumentParser(prog="meshsigner", description="Istio CA front door with YAML policy")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, run) in _COMMANDS.items():
        command = commands.add_parser(name, help=help_text)
        if everything or chosen == name:
            add_arguments(command)
        command.set_defaults(func=run)
    if everything or chosen == "policy":
        from policies.commands import add_policy_commands

        add_policy_commands(commands, live_objects=_live_policy_objects)
    else:
        commands.add_parser("policy", help=_POLICY_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words)  # `meshsigner --help` lists the commands and loads none of them
    args = parser.parse_args(words)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
