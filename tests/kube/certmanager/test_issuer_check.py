"""The issuer check on the real plane: the start-up read is not repeated when the check starts watching, and a
new active issuer is read at once."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from bridge.issuer_check import IssuerCheck, IssuerState
from bridge.kube import KubeClient, KubeMetrics, KubeOptions
from bridge.runtime_issuer import IssuerRef, IssuerSelector


def _calls(registry: CollectorRegistry, verb: str, resource: str) -> float:
    labels = {"verb": verb, "resource": resource, "code": "2xx"}
    return registry.get_sample_value("meshsigner_kube_api_requests_total", labels) or 0.0


async def _until(condition, what: str, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def test_start_up_reads_the_issuer_once_and_a_new_issuer_is_read_again(
    kube_plane, make_namespace, make_ca_issuer
):
    namespace = make_namespace("issuers")
    first, second = make_ca_issuer(namespace, "first"), make_ca_issuer(namespace, "second")
    registry = CollectorRegistry()
    kube = KubeClient(KubeOptions(kubeconfig=kube_plane.kubeconfig), KubeMetrics(registry))
    selector = IssuerSelector(IssuerRef(first.name, "Issuer"))
    check = IssuerCheck(kube, selector, namespace, CollectorRegistry())
    stop = asyncio.Event()
    try:
        assert await check.probe() in (IssuerState.READY, IssuerState.NOT_READY)  # serve's start-up read
        task = asyncio.create_task(check.run(stop))
        await _until(lambda: _calls(registry, "list", "issuers") >= 1, "the check's watch listed the issuer")
        await _until(lambda: check.state is IssuerState.READY, "the first issuer is ready")
        assert _calls(registry, "get", "issuers") == 1, "the running check read the issuer start-up had just read"

        selector.on_event(
            "ADDED", {"data": {"issuer-name": second.name, "issuer-kind": "Issuer", "issuer-group": "cert-manager.io"}}
        )
        await _until(lambda: _calls(registry, "get", "issuers") == 2, "the new issuer read")
        await _until(lambda: _calls(registry, "list", "issuers") >= 2, "the new issuer watched")
        await _until(lambda: check.state is IssuerState.READY, "the second issuer is ready")
        stop.set()
        await asyncio.wait_for(task, 10)
    finally:
        stop.set()
        kube.close()
