"""Faults of the real plane (kube-apiserver, its watch, cert-manager, the issuer, meshsigner itself) in the middle
of bursts of CreateCertificate: every request is answered (OK or a clean refusal, never a hang), the server
recovers by itself, and no CertificateRequest is left behind. Each scenario prints its docs/faults.md row."""

from __future__ import annotations

import base64
import os
import signal
import socket
import threading
import time

import grpc
from cryptography import x509
from kubernetes import client

from proto import istio_ca_pb2_grpc
from tests.kube.certmanager.conftest import SERVER_NAME, list_requests
from tests.kube.faults.cutting_proxy import CuttingProxy
from tests.kube.faults.tally import CLEAN_FAULT_CODES, Answer, Tally, burst, call
from tests.support.waiting import wait_for

FAST_API = ("--kube-api-qps=500", "--kube-api-burst=500")


def _sender(stub, identities, deadline: float):
    return lambda index: call(stub, *identities[index % len(identities)], deadline=deadline)


def _fire_once(at: int, action) -> tuple[threading.Event, object]:
    """An ``on_progress`` hook running ``action`` in its own thread when the ``at``-th answer arrives."""
    fired = threading.Event()

    def hook(done: int) -> None:
        if done == at and not fired.is_set():
            fired.set()
            threading.Thread(target=action, daemon=True).start()

    return fired, hook


def _until_ok(send, timeout: float) -> list[Answer]:
    """Calls until one is OK (the server recovered); every call is counted."""
    answers: list[Answer] = []
    deadline = time.monotonic() + timeout
    while not answers or answers[-1].code != grpc.StatusCode.OK:
        assert time.monotonic() < deadline, f"no recovery within {timeout:.0f}s: {answers[-3:]}"
        if answers:
            time.sleep(0.5)
        answers.append(send(len(answers)))
    return answers


def _start_apiserver_when_port_frees(plane, timeout: float = 120) -> None:
    """Start kube-apiserver again on its port. After a SIGKILL its server side of idle client connections can
    sit in FIN_WAIT2 until the clients close them, and bind() fails meanwhile: retry until the port is free."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", plane.api_port))
                break
            except OSError:
                assert time.monotonic() < deadline, "kube-apiserver's port never became free"
        time.sleep(0.5)
    plane.start_apiserver()


def _leaked(kube_api, namespace: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while (left := list_requests(kube_api, namespace)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return len(left)


def _check(tally: Tally, allowed=CLEAN_FAULT_CODES) -> dict:
    row = tally.report()
    assert tally.lost == 0, row
    assert {a.code for a in tally.answers} <= allowed, row
    assert tally.leaked == 0, row
    return row


def _all_ok(answers: list[Answer]) -> None:
    assert all(a.code == grpc.StatusCode.OK for a in answers), [a for a in answers if a.code != grpc.StatusCode.OK]


def test_apiserver_killed_and_restarted_mid_burst(
    kube_api, plane, make_namespace, identities, ca_cluster_issuer, signer_factory
):
    cr_ns = make_namespace("istio-system")
    signer = signer_factory(
        cr_ns, ca_cluster_issuer, *FAST_API, "--request-timeout=10s", "--certificate-request-timeout=8s"
    )
    send = _sender(signer.stub(), identities, deadline=20)
    api = plane.procs["kube-apiserver"]
    restarted = threading.Event()

    def kill_and_restart() -> None:
        os.kill(api.pid, signal.SIGKILL)
        while api.alive():
            time.sleep(0.05)
        _start_apiserver_when_port_frees(plane)
        restarted.set()

    tally = Tally("kube-apiserver SIGKILLed at the 30th answer of a 150-request burst, restarted")
    fired, hook = _fire_once(30, kill_and_restart)
    tally.add(burst(send, 150, 20, hook))
    assert fired.is_set()
    assert restarted.wait(180), "kube-apiserver did not come back"
    tally.add(_until_ok(send, timeout=90))
    after = burst(send, 50, 10)
    _all_ok(after)
    tally.add(after)
    tally.leaked = _leaked(kube_api, cr_ns)
    row = _check(tally)
    assert row["ok"] >= 80, row


def test_apiserver_hung_longer_than_the_request_timeout(
    kube_api, plane, make_namespace, identities, ca_cluster_issuer, signer_factory
):
    request_timeout, hang = 4.0, 10.0
    cr_ns = make_namespace("istio-system")
    signer = signer_factory(
        cr_ns, ca_cluster_issuer, *FAST_API, f"--request-timeout={request_timeout:g}s",
        "--certificate-request-timeout=3s",
    )  # fmt: skip
    send = _sender(signer.stub(), identities, deadline=request_timeout + 10)
    api_pid = plane.procs["kube-apiserver"].pid
    resumed = threading.Event()

    def hang_then_resume() -> None:
        os.kill(api_pid, signal.SIGSTOP)
        try:
            time.sleep(hang)  # the fault itself lasts this long; nothing is being waited for here
        finally:
            os.kill(api_pid, signal.SIGCONT)
            resumed.set()

    tally = Tally(f"kube-apiserver SIGSTOPped {hang:g}s (> --request-timeout {request_timeout:g}s) mid-burst, SIGCONT")
    fired, hook = _fire_once(20, hang_then_resume)
    tally.add(burst(send, 120, 20, hook))
    assert fired.is_set()
    assert resumed.wait(hang + 5)
    slowest = max(a.seconds for a in tally.answers)
    assert slowest < request_timeout + 3, f"a request outlived --request-timeout: {slowest:.1f}s"
    assert any(a.code == grpc.StatusCode.UNAVAILABLE for a in tally.answers), "the hang was never felt"
    tally.add(_until_ok(send, timeout=60))
    after = burst(send, 50, 10)
    _all_ok(after)
    tally.add(after)
    tally.leaked = _leaked(kube_api, cr_ns)
    _check(tally)


def test_watch_connection_cut_mid_burst(
    kube_api, plane, make_namespace, identities, ca_cluster_issuer, signer_factory, tmp_path
):
    """meshsigner reaches kube-apiserver through a proxy that cuts every connection (its CertificateRequest watch,
    its in-flight calls) twice during the burst; cert-manager keeps its own direct connection."""
    proxy = CuttingProxy(plane.api_port)
    try:
        kubeconfig = proxy.kubeconfig(plane.kubeconfig, tmp_path / "via-proxy.kubeconfig")
        cr_ns = make_namespace("istio-system")
        signer = signer_factory(
            cr_ns, ca_cluster_issuer, *FAST_API, f"--kubeconfig={kubeconfig}", "--request-timeout=10s",
            "--certificate-request-timeout=8s",
        )  # fmt: skip
        assert proxy.accepted > 0, "serve did not go through the proxy"
        send = _sender(signer.stub(), identities, deadline=20)
        cut_sizes: list[int] = []

        def hook(done: int) -> None:
            if done in (40, 100):
                cut_sizes.append(proxy.cut())

        tally = Tally("meshsigner's API connections (watch included) cut at the 40th and 100th answers of 150")
        tally.add(burst(send, 150, 20, hook))
        assert len(cut_sizes) == 2 and min(cut_sizes) > 0, cut_sizes
        tally.add(_until_ok(send, timeout=60))
        after = burst(send, 30, 10)
        _all_ok(after)
        tally.add(after)
        tally.leaked = _leaked(kube_api, cr_ns)
        restarts = signer.server.metric(
            'meshsigner_kube_watch_restarts_total{reason="error",resource="certificaterequests"}'
        )
        tally.notes = f"{sum(cut_sizes)} connections cut, watch restarts {restarts:g}"
        _check(tally)
        assert restarts >= 1, "the watch never noticed the cut"
    finally:
        proxy.close()


def test_cert_manager_controller_stopped_then_restarted(
    kube_api, plane, make_namespace, identities, ca_cluster_issuer, signer_factory
):
    cr_ns = make_namespace("istio-system")
    signer = signer_factory(
        cr_ns, ca_cluster_issuer, *FAST_API, "--request-timeout=8s", "--certificate-request-timeout=3s"
    )
    send = _sender(signer.stub(), identities, deadline=20)
    tally = Tally("cert-manager controller stopped for a 30-request burst, then restarted")
    warm = [send(0)]
    _all_ok(warm)
    tally.add(warm)
    plane.stop_cm_controller()
    stopped = burst(send, 30, 10)
    tally.add(stopped)
    assert all(a.code == grpc.StatusCode.UNAVAILABLE and "CERTIFICATE_REQUEST_TIMEOUT" in a.details for a in stopped), (
        tally.row()
    )
    assert _leaked(kube_api, cr_ns, timeout=20) == 0, (
        "timed-out requests were not cleaned up while cert-manager was down"
    )
    plane.start_cm_controller()
    tally.add(_until_ok(send, timeout=60))
    after = burst(send, 30, 10)
    _all_ok(after)
    tally.add(after)
    tally.leaked = _leaked(kube_api, cr_ns)
    _check(tally)


def test_issuer_not_ready_then_ready_again(kube_api, plane, make_namespace, identities, make_ca_issuer, signer_factory):
    cr_ns = make_namespace("istio-system")
    issuer = make_ca_issuer(cr_ns)
    signer = signer_factory(cr_ns, issuer, *FAST_API, "--request-timeout=8s", "--certificate-request-timeout=3s")
    send = _sender(signer.stub(), identities, deadline=20)
    core = client.CoreV1Api(kube_api)
    secret = core.read_namespaced_secret(issuer.secret_name, cr_ns)
    tally = Tally("issuer's CA secret deleted (issuer not Ready), 30-request burst, secret restored")
    warm = [send(0)]
    _all_ok(warm)
    tally.add(warm)

    core.delete_namespaced_secret(issuer.secret_name, cr_ns)
    deadline = time.monotonic() + 60
    while True:  # cert-manager notices, the Issuer turns Ready=False, meshsigner's issuer check follows
        answer = send(len(tally.answers))
        tally.add([answer])
        if "ISSUER_NOT_READY" in answer.details:
            break
        assert time.monotonic() < deadline, f"the issuer never turned not Ready: {answer}"
        time.sleep(0.5)
    refused = burst(send, 30, 10)
    tally.add(refused)
    assert all(a.code == grpc.StatusCode.UNAVAILABLE and "ISSUER_NOT_READY" in a.details for a in refused), [
        a.details for a in refused
    ]
    assert max(a.seconds for a in refused) < 2, "a not-Ready issuer should be refused at once, not waited for"

    secret.metadata = client.V1ObjectMeta(name=issuer.secret_name)
    core.create_namespaced_secret(cr_ns, secret)
    tally.add(_until_ok(send, timeout=90))
    after = burst(send, 30, 10)
    _all_ok(after)
    tally.add(after)
    tally.leaked = _leaked(kube_api, cr_ns)
    _check(tally)


def _serials(answers: list[Answer]) -> list[int]:
    return [x509.load_pem_x509_certificate(a.chain[0].encode()).serial_number for a in answers if a.chain]


def test_meshsigner_killed_mid_burst_and_restarted(
    kube_api, plane, make_namespace, identities, ca_cluster_issuer, signer_factory, approver
):
    """The killed replica's CertificateRequests (some signed by cert-manager after the kill) are swept by the next
    replica and their certificates never reach a client; every client answer carries its own certificate."""
    cr_ns = make_namespace("istio-system")
    flags = (*FAST_API, "--request-timeout=6s", "--certificate-request-timeout=2s")
    approver(cr_ns)  # approval (and so signing) goes on while meshsigner is dead
    first = signer_factory(cr_ns, ca_cluster_issuer, *flags, approve=False)
    tally = Tally("meshsigner SIGKILLed at the 40th answer of a 150-request burst, a new replica started")
    killed = threading.Event()

    def kill() -> None:
        first.server.process.kill()
        killed.set()

    fired, hook = _fire_once(40, kill)
    tally.add(burst(_sender(first.stub(), identities, deadline=16), 150, 20, hook))
    assert fired.is_set() and killed.wait(5)
    assert first.server.process.wait(10) == -signal.SIGKILL
    time.sleep(0.5)  # cert-manager may still sign what the approver approved; those certificates must stay unseen
    orphans = list_requests(kube_api, cr_ns)
    orphan_serials = {
        x509.load_pem_x509_certificate(base64.b64decode(cr["status"]["certificate"])).serial_number
        for cr in orphans
        if (cr.get("status") or {}).get("certificate")
    }

    # Some of those were already answered (their deletion was still queued when the process died): only the new
    # replica's answers must stay clear of them.
    served_before = _serials(tally.answers)
    # the new replica approves its own requests (the test approver's polling is too slow for a 2 s request
    # timeout under load); its sweep deletes what is older than twice that timeout, at start-up
    second = signer_factory(cr_ns, ca_cluster_issuer, *flags, approve=True)
    send = _sender(second.stub(), identities, deadline=16)
    recovered = _until_ok(send, timeout=30)
    after = burst(send, 50, 5)
    _all_ok(after)
    tally.add(recovered + after)
    tally.leaked = _leaked(kube_api, cr_ns)
    served_after = _serials(recovered + after)
    tally.notes = (
        f"{len(orphans)} CertificateRequests left by the killed replica ({len(orphan_serials)} signed), all swept"
    )
    _check(tally)
    served = served_before + served_after
    assert len(served) == len(set(served)), "a certificate was handed to two clients"
    assert not orphan_serials & set(served_after), "the new replica answered with a dead replica's certificate"
    assert orphans, "the kill left nothing in flight: the sweep was not exercised"


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _tcp_established(pid: int, *, local_port: int = 0, remote_port: int = 0) -> int:
    """Established TCP connections of process ``pid`` on a local or remote port (from /proc, no tools needed)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                if state != "01" or inode not in inodes:
                    continue
                if (local_port and int(local.rsplit(":", 1)[1], 16) == local_port) or (
                    remote_port and int(remote.rsplit(":", 1)[1], 16) == remote_port
                ):
                    count += 1
    return count


def test_reconnect_storm_of_2000_agents_engages_max_in_flight_and_recovers(
    kube_api, plane, make_namespace, identities, ca_cluster_issuer, signer_factory
):
    """2,000 restarting agents, each with its own new TLS connection and one request, 160 at once, against a
    cert-manager-mode signer (where calls wait on the API, so they pile up): --max-in-flight refuses the excess
    with RESOURCE_EXHAUSTED, and the server is back to normal (nothing in flight, connections closed) after."""
    agents, concurrency, max_in_flight = 2000, 160, 16
    cr_ns = make_namespace("istio-system")
    signer = signer_factory(
        cr_ns, ca_cluster_issuer, *FAST_API, f"--max-in-flight={max_in_flight}", "--request-timeout=10s",
        "--certificate-request-timeout=8s",
    )  # fmt: skip
    server = signer.server
    fds_before = _open_fds(server.process.pid)

    def agent(index: int) -> Answer:
        channel = grpc.secure_channel(
            server.address,
            grpc.ssl_channel_credentials(root_certificates=signer.roots_pem),
            options=[("grpc.ssl_target_name_override", SERVER_NAME), ("grpc.use_local_subchannel_pool", 1)],
        )
        try:
            stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(channel)
            return call(stub, *identities[index % len(identities)], deadline=25)
        finally:
            channel.close()

    tally = Tally(
        f"reconnect storm: {agents} agents, a new TLS connection each, {concurrency} at once, "
        f"--max-in-flight={max_in_flight}"
    )
    started = time.perf_counter()
    tally.add(burst(agent, agents, concurrency))
    elapsed = time.perf_counter() - started
    assert tally.codes["RESOURCE_EXHAUSTED"] > 0, f"--max-in-flight never engaged: {tally.codes}"
    assert all("TOO_MANY_IN_FLIGHT" in a.details for a in tally.answers if a.code == grpc.StatusCode.RESOURCE_EXHAUSTED)

    send = _sender(signer.stub(), identities, deadline=20)
    after = burst(send, 30, 10)
    _all_ok(after)
    tally.add(after)
    wait_for(lambda: server.metric("meshsigner_csr_in_flight") == 0, "nothing left in flight")
    # the storm's TLS connections are all gone (the one left is the stub above); the kube client's connection pool
    # to the API server grew under the load, within its thread pool's bound, and stays warm: reported, not asserted
    wait_for(lambda: _tcp_established(server.process.pid, local_port=server.grpc_port) <= 1, "storm connections closed")
    tally.leaked = _leaked(kube_api, cr_ns)
    tally.notes = (
        f"storm {elapsed:.1f}s ({agents / elapsed:.0f} agents/s); serve fds {fds_before} before, "
        f"{_open_fds(server.process.pid)} after ({_tcp_established(server.process.pid, remote_port=plane.api_port)} "
        "of them kube client connections to the API)"
    )
    _check(tally, allowed={grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED})


def test_root_file_replaced_by_garbage_then_rotated(
    kube_api, plane, make_namespace, identities, make_ca_issuer, signer_factory, tmp_path, pki
):
    """--root-ca-file overwritten with garbage (the previous roots stay pinned, requests go on), then a valid
    rotation: a bundle of the old and a new CA, after which the issuer switches to the new CA and its chains verify."""
    cr_ns = make_namespace("istio-system")
    issuer = make_ca_issuer(cr_ns)
    roots = tmp_path / "pinned-roots.pem"
    roots.write_bytes(issuer.ca_cert_pem)
    signer = signer_factory(cr_ns, issuer, *FAST_API, "--request-timeout=8s", root_file=roots)
    send = _sender(signer.stub(), identities, deadline=20)
    tally = Tally("--root-ca-file replaced by garbage (2 kinds), then rotated (old+new CA), issuer moved to new CA")
    tally.add(burst(send, 20, 10))
    rejections = "meshsigner_root_bundle_rejections_total"
    for number, garbage in enumerate((b"-----BEGIN CERTIFICATE-----\nnot base64\n", b"\x00" * 300), start=1):
        roots.write_bytes(garbage)
        wait_for(lambda n=number: signer.server.metric(rejections) >= n, "the garbage bundle refused")
        tally.add(burst(send, 20, 10))
    _all_ok(tally.answers)

    new_ca = pki.make_ca("meshsigner-rotated-root", days=30)
    loaded = signer.server.log().count("root_bundle_loaded")
    roots.write_bytes(issuer.ca_cert_pem + new_ca.cert_pem)
    wait_for(lambda: signer.server.log().count("root_bundle_loaded") > loaded, "the rotated bundle loaded")
    issuer.replace_key_pair(kube_api, new_ca)
    new_subject = new_ca.cert.subject
    deadline = time.monotonic() + 60
    while True:  # cert-manager picks the new key up; every answer meanwhile is OK from either CA
        answer = send(len(tally.answers))
        tally.add([answer])
        assert answer.code == grpc.StatusCode.OK, answer
        if x509.load_pem_x509_certificate(answer.chain[0].encode()).issuer == new_subject:
            break
        assert time.monotonic() < deadline, "the issuer never signed with the new CA"
        time.sleep(0.3)
    after = burst(send, 20, 10)
    _all_ok(after)
    tally.add(after)
    tally.leaked = _leaked(kube_api, cr_ns)
    _check(tally, allowed={grpc.StatusCode.OK})
