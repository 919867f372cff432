"""The pure pod index behind node authorization (bridge/pods.py) and how the authorizer maps its verdicts to codes."""

from __future__ import annotations

import pytest

from bridge.pods import NodeVerdict, PodIndex, PodInfo, pod_info
from signer.auth.base import WorkloadIdentity
from signer.auth.node_authorizer import PodNodeAuthorizer
from signer.errors import NotPermitted, RequestRejected, TemporarilyUnavailable

ZTUNNEL = PodInfo("istio-system", "ztunnel-a", "uid-z", "ztunnel", "node-a", "Running")
WEB = PodInfo("orders", "web-1", "uid-w1", "web", "node-a", "Pending")
API = PodInfo("payments", "api-1", "uid-a1", "api", "node-b", "Running")


def _pod(namespace: str, name: str, uid: str, sa: str = "web", node: str = "node-a", phase: str | None = "Running"):
    obj: dict = {
        "metadata": {"namespace": namespace, "name": name, "uid": uid, "labels": {"x": "y"}},
        "spec": {"serviceAccountName": sa, "nodeName": node, "containers": [{"name": "c", "image": "i"}]},
    }
    if phase is not None:
        obj["status"] = {"phase": phase, "podIP": "10.0.0.1"}
    return obj


def _index(*pods: PodInfo) -> PodIndex:
    index = PodIndex()
    index.replace_all(list(pods))
    return index


def _check(index: PodIndex, namespace: str, sa: str, *, uid: str = "uid-z", caller_sa: str = "ztunnel"):
    return index.check(
        caller_namespace="istio-system",
        caller_service_account=caller_sa,
        caller_pod_name="ztunnel-a",
        caller_pod_uid=uid,
        namespace=namespace,
        service_account=sa,
    )


def test_pod_info_keeps_only_the_decision_fields() -> None:
    assert pod_info(_pod("orders", "web-1", "uid-w1", phase="Pending")) == WEB
    assert pod_info(_pod("orders", "web-1", "uid-w1", phase=None)) == WEB  # no status yet: Pending
    assert pod_info({"metadata": {"name": "x", "uid": "u"}}) is None  # no namespace
    assert pod_info({"metadata": {"namespace": "n", "name": "x"}}) is None  # no UID
    bare = pod_info({"metadata": {"namespace": "n", "name": "x", "uid": "u"}})
    assert bare == PodInfo("n", "x", "u", "", "", "Pending")


def test_not_synced_decides_nothing() -> None:
    index = PodIndex()
    index.upsert(ZTUNNEL)
    index.upsert(WEB)
    assert _check(index, "orders", "web").verdict is NodeVerdict.NOT_SYNCED
    index.replace_all([ZTUNNEL, WEB])
    assert _check(index, "orders", "web").allowed


def test_same_node_allowed_other_node_refused() -> None:
    index = _index(ZTUNNEL, WEB, API)
    allowed = _check(index, "orders", "web")
    assert allowed.allowed and allowed.node == "node-a"
    off = _check(index, "payments", "api")
    assert off.verdict is NodeVerdict.OFF_NODE and off.node == "node-a"
    assert _check(index, "orders", "nobody").verdict is NodeVerdict.OFF_NODE
    assert _check(index, "payments", "web").verdict is NodeVerdict.OFF_NODE  # SA name alone is not enough


@pytest.mark.parametrize(
    ("uid", "caller_sa", "verdict"),
    [
        ("uid-other", "ztunnel", NodeVerdict.CALLER_POD_UID_MISMATCH),
        ("uid-z", "other", NodeVerdict.CALLER_POD_SA_MISMATCH),
    ],
)
def test_caller_pod_must_match_the_token(uid: str, caller_sa: str, verdict: NodeVerdict) -> None:
    assert _check(_index(ZTUNNEL, WEB), "orders", "web", uid=uid, caller_sa=caller_sa).verdict is verdict


def test_caller_pod_unknown_or_finished() -> None:
    assert _check(_index(WEB), "orders", "web").verdict is NodeVerdict.CALLER_POD_NOT_FOUND
    finished = PodInfo("istio-system", "ztunnel-a", "uid-z", "ztunnel", "node-a", "Failed")
    assert _check(_index(finished, WEB), "orders", "web").verdict is NodeVerdict.CALLER_POD_NOT_LIVE


@pytest.mark.parametrize(("phase", "live"), [("Pending", True), ("Running", True), ("Succeeded", False),
                                             ("Failed", False), ("Unknown", False)])  # fmt: skip
def test_only_pending_and_running_count(phase: str, live: bool) -> None:
    workload = PodInfo("orders", "web-1", "uid-w1", "web", "node-a", phase)
    assert _check(_index(ZTUNNEL, workload), "orders", "web").allowed is live


def test_phase_change_and_delete_update_the_node_index() -> None:
    index = _index(ZTUNNEL, WEB)
    index.upsert(PodInfo("orders", "web-1", "uid-w1", "web", "node-a", "Succeeded"))
    assert _check(index, "orders", "web").verdict is NodeVerdict.OFF_NODE
    assert index.pod("orders", "web-1") is not None  # still known by name, just not live
    index.upsert(PodInfo("orders", "web-2", "uid-w2", "web", "node-a", "Running"))
    assert _check(index, "orders", "web").allowed
    index.remove(PodInfo("orders", "web-2", "uid-w2", "web", "node-a", "Running"))
    assert _check(index, "orders", "web").verdict is NodeVerdict.OFF_NODE
    assert index.pod("orders", "web-2") is None


def test_two_pods_of_one_sa_on_a_node_both_have_to_go() -> None:
    second = PodInfo("orders", "web-2", "uid-w2", "web", "node-a", "Running")
    index = _index(ZTUNNEL, WEB, second)
    index.remove(WEB)
    assert _check(index, "orders", "web").allowed
    index.remove(second)
    assert not _check(index, "orders", "web").allowed
    assert index.live_slot_count == 1  # only ztunnel's: no empty slot is left behind


def test_late_delete_of_an_earlier_incarnation_keeps_the_new_pod() -> None:
    index = _index(ZTUNNEL, WEB)
    recreated = PodInfo("orders", "web-1", "uid-new", "web", "node-a", "Running")
    index.upsert(recreated)
    index.remove(WEB)  # the DELETED event of the old UID, arriving late
    assert index.pod("orders", "web-1") == recreated
    assert _check(index, "orders", "web").allowed


def test_relist_replaces_everything() -> None:
    index = _index(ZTUNNEL, WEB)
    index.replace_all([ZTUNNEL, API])
    assert index.pod("orders", "web-1") is None
    assert _check(index, "orders", "web").verdict is NodeVerdict.OFF_NODE
    assert len(index) == 2


def test_unscheduled_or_anonymous_pods_are_not_indexed_by_node() -> None:
    index = _index(ZTUNNEL, PodInfo("orders", "web-1", "uid-w1", "web", "", "Pending"))
    assert _check(index, "orders", "web").verdict is NodeVerdict.OFF_NODE
    index.upsert(PodInfo("orders", "web-3", "uid-w3", "", "node-a", "Running"))
    assert not index.live_on_node("orders", "", "node-a")


# --- the authorizer's codes --------------------------------------------------------------------------------------


def _node(pod_name: str | None = "ztunnel-a", pod_uid: str | None = "uid-z") -> WorkloadIdentity:
    return WorkloadIdentity("istio-system", "ztunnel", pod_name=pod_name, pod_uid=pod_uid)


async def test_authorizer_allows_on_node() -> None:
    await PodNodeAuthorizer(_index(ZTUNNEL, WEB)).authorize(_node(), "orders", "web")


@pytest.mark.parametrize(
    ("index", "node", "error", "reason"),
    [
        (_index(ZTUNNEL, WEB), _node(pod_name=None, pod_uid=None), NotPermitted, "IMPERSONATION_UNBOUND_TOKEN"),
        (_index(ZTUNNEL, WEB), _node(pod_uid=None), NotPermitted, "IMPERSONATION_UNBOUND_TOKEN"),
        (PodIndex(), _node(), TemporarilyUnavailable, "IMPERSONATION_PODS_NOT_SYNCED"),
        (_index(WEB), _node(), TemporarilyUnavailable, "IMPERSONATION_CALLER_POD_UNKNOWN"),
        (_index(ZTUNNEL, WEB), _node(pod_uid="uid-old"), TemporarilyUnavailable,
         "IMPERSONATION_CALLER_POD_UID_MISMATCH"),
        (_index(ZTUNNEL, API), _node(), NotPermitted, "IMPERSONATION_OFF_NODE"),
    ],
)  # fmt: skip
async def test_authorizer_refusals(
    index: PodIndex, node: WorkloadIdentity, error: type[RequestRejected], reason: str
) -> None:
    with pytest.raises(error) as raised:
        await PodNodeAuthorizer(index).authorize(node, "orders", "web")
    assert raised.value.reason == reason


async def test_authorizer_caller_pod_under_another_sa_is_denied() -> None:
    with pytest.raises(NotPermitted) as raised:
        await PodNodeAuthorizer(_index(ZTUNNEL, WEB)).authorize(
            WorkloadIdentity("istio-system", "intruder", pod_name="ztunnel-a", pod_uid="uid-z"), "orders", "web"
        )
    assert raised.value.reason == "IMPERSONATION_CALLER_POD_SA_MISMATCH"
