"""Manage meshsigner's test control plane: etcd + kube-apiserver + cert-manager controller on 127.0.0.1.

Command line (``up.sh``/``down.sh`` call it with the project's venv Python)::

    python tests/cluster/plane.py up       # start, or reuse the running plane; returns when ready
                                           # (--for-tests: started by the pytest fixtures, which stop
                                           # it again when the last session using it ends)
    python tests/cluster/plane.py down     # stop the processes and remove .cluster/
    python tests/cluster/plane.py status   # print the state (exit 1 if not running)

State lives in ``<repo>/.cluster/`` (gitignored; ``MESHSIGNER_CLUSTER_DIR`` overrides):

    kubeconfig          admin kubeconfig (client certificate in group system:masters)
    state.json          ports, pids, command lines, versions
    pki/                ca.crt/key, apiserver.crt/key, admin.crt/key, sa.key/sa.pub
    logs/               etcd.log, kube-apiserver.log, cm-controller.log
    etcd/               etcd data dir

The binaries come from ``build.sh`` (cache outside the checkout); ``up`` does not build them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _load_sibling(modname: str, filename: str):
    """Import a file next to this one under a unique module name (tests/ is not a package)."""
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, HERE / filename)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod


pki = _load_sibling("meshsigner_testplane_pki", "pki.py")

CLUSTER_RESOURCE_NAMESPACE = "cert-manager"
LOOPBACK = "127.0.0.1"


def cluster_dir() -> Path:
    return Path(os.environ.get("MESHSIGNER_CLUSTER_DIR") or REPO / ".cluster").resolve()


def _lock_path() -> Path:
    # Outside .cluster/ (which `down` removes) and outside the checkout.
    digest = hashlib.sha256(str(cluster_dir()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"meshsigner-cluster-{digest}.lock"


@contextlib.contextmanager
def plane_lock():
    """Serialises up/down between processes (several pytest sessions may share one checkout)."""
    with open(_lock_path(), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def log(msg: str) -> None:
    print(f"[plane {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class PlaneError(RuntimeError):
    pass


def binaries() -> dict[str, str]:
    """Paths and versions from ``build.sh --env`` (nothing is built)."""
    out = subprocess.run(["bash", str(HERE / "build.sh"), "--env"], check=True, capture_output=True, text=True).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return env


def missing_binaries(env: dict[str, str]) -> list[str]:
    paths = [env["ETCD_BIN"], env["KUBE_APISERVER_BIN"], env["CM_CONTROLLER_BIN"], env["CM_CRDS_DIR"]]
    return [p for p in paths if not Path(p).exists()]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _pid_alive(pid: int, exe: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except OSError:
        return False
    if exe:
        # Guards against a recycled pid: the process must run the binary we started. /proc/<pid>/exe is set by
        # exec itself; cmdline can still read empty for a moment after launch, which means "starting", not "dead".
        try:
            if os.readlink(f"/proc/{pid}/exe") == str(Path(exe).resolve()):
                return True
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return not cmdline or cmdline.split(b"\0", 1)[0].decode() == exe
    return True


def _terminate(pid: int, exe: str, timeout: float = 15.0) -> None:
    if not _pid_alive(pid, exe):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid, exe):
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _ssl_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert and key:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _http_get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: str
    pid: int = 0

    def alive(self) -> bool:
        return bool(self.pid) and _pid_alive(self.pid, self.argv[0])

    def start(self) -> None:
        with open(self.log, "ab") as out:
            out.write(f"\n===== start {time.strftime('%Y-%m-%dT%H:%M:%S')} =====\n".encode())
            out.flush()
            p = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                cwd=str(cluster_dir()),
            )
        self.pid = p.pid
        # Popen objects that are never waited on warn; the plane outlives this process by design.
        p.returncode = 0

    def stop(self, timeout: float = 15.0) -> None:
        if self.pid:
            _terminate(self.pid, self.argv[0], timeout)
        self.pid = 0

    def wait_until(self, check, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.alive():
                raise PlaneError(f"{self.name} exited while waiting for {what}; log tail:\n{_tail(Path(self.log))}")
            try:
                ok, last = check()
            except OSError as e:
                ok, last = False, str(e)
            if ok:
                return
            time.sleep(0.25)
        raise PlaneError(
            f"{self.name}: {what} not reached in {timeout:.0f}s (last: {last[:300]}); log tail:\n"
            f"{_tail(Path(self.log))}"
        )


@dataclass
class Plane:
    """A running test control plane. Load one with :func:`load` or :func:`up`."""

    dir: str
    kubeconfig: str
    api_server_url: str
    ca_cert_path: str
    admin_cert_path: str
    admin_key_path: str
    sa_key_path: str
    sa_pub_path: str
    service_account_issuer: str
    etcd_url: str
    etcd_port: int
    api_port: int
    cm_healthz_port: int
    cm_metrics_port: int
    cluster_resource_namespace: str
    versions: dict[str, str]
    procs: dict[str, Proc] = field(default_factory=dict)
    auto_started: bool = False
    started_at: float = 0.0
    startup_seconds: float = 0.0
    external: bool = False

    # ----- persistence -----
    @property
    def state_path(self) -> Path:
        return Path(self.dir) / "state.json"

    def save(self) -> None:
        data = asdict(self)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.state_path)

    @classmethod
    def from_dict(cls, data: dict) -> Plane:
        procs = {k: Proc(**v) for k, v in data.pop("procs", {}).items()}
        return cls(**data, procs=procs)

    # ----- health -----
    def ssl_context(self, admin: bool = False) -> ssl.SSLContext:
        if admin:
            return _ssl_context(Path(self.ca_cert_path), Path(self.admin_cert_path), Path(self.admin_key_path))
        return _ssl_context(Path(self.ca_cert_path))

    def apiserver_ready(self) -> tuple[bool, str]:
        status, body = _http_get(f"{self.api_server_url}/readyz", self.ssl_context())
        return status == 200, body

    def etcd_healthy(self) -> tuple[bool, str]:
        status, body = _http_get(f"{self.etcd_url}/health")
        return status == 200 and '"true"' in body, body

    def cm_ready(self) -> tuple[bool, str]:
        status, body = _http_get(f"http://{LOOPBACK}:{self.cm_healthz_port}/readyz")
        return status == 200, body

    def healthy(self) -> bool:
        if not all(p.alive() for p in self.procs.values()):
            return False
        try:
            return self.etcd_healthy()[0] and self.apiserver_ready()[0] and self.cm_ready()[0]
        except OSError:
            return False

    # ----- fault injection helpers -----
    def stop_apiserver(self) -> None:
        """Stop kube-apiserver (etcd and the controller keep running). Affects every user of this plane."""
        self.procs["kube-apiserver"].stop()
        self.save()

    def start_apiserver(self, timeout: float = 180.0) -> None:
        """Start kube-apiserver again with the same flags, port and keys, and wait for /readyz."""
        p = self.procs["kube-apiserver"]
        if not p.alive():
            p.start()
            self.save()
        p.wait_until(self.apiserver_ready, timeout, "/readyz")

    def restart_apiserver(self, timeout: float = 180.0) -> None:
        self.stop_apiserver()
        self.start_apiserver(timeout)

    def stop_cm_controller(self) -> None:
        self.procs["cm-controller"].stop()
        self.save()

    def start_cm_controller(self, timeout: float = 60.0) -> None:
        p = self.procs["cm-controller"]
        if not p.alive():
            p.start()
            self.save()
        p.wait_until(self.cm_ready, timeout, "/readyz")


def load() -> Plane | None:
    """The plane recorded in .cluster/state.json, or None."""
    path = cluster_dir() / "state.json"
    if not path.exists():
        return None
    try:
        return Plane.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError):
        return None


def _write_pki(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    ca = pki.make_ca("meshsigner-test-plane-ca")
    srv = pki.issue(
        ca,
        "kube-apiserver",
        server=True,
        dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
        ips=(LOOPBACK,),
    )
    admin = pki.issue(ca, "meshsigner-test-admin", organizations=("system:masters",), client=True)
    sa_key, sa_pub = pki.rsa_key_pair()
    files = {
        "ca.crt": ca.cert_pem,
        "ca.key": ca.key_pem,
        "apiserver.crt": srv.cert_pem,
        "apiserver.key": srv.key_pem,
        "admin.crt": admin.cert_pem,
        "admin.key": admin.key_pem,
        "sa.key": sa_key,
        "sa.pub": sa_pub,
    }
    out = {}
    for name, data in files.items():
        p = d / name
        p.write_bytes(data)
        p.chmod(0o600 if name.endswith(".key") else 0o644)
        out[name] = p
    return out


def _kubeconfig(server: str, ca: Path, cert: Path, key: Path) -> str:
    return (
        "apiVersion: v1\nkind: Config\n"
        "clusters:\n- name: meshsigner-test\n  cluster:\n"
        f"    server: {server}\n    certificate-authority: {ca}\n"
        "users:\n- name: meshsigner-test-admin\n  user:\n"
        f"    client-certificate: {cert}\n    client-key: {key}\n"
        "contexts:\n- name: meshsigner-test\n  context:\n    cluster: meshsigner-test\n"
        "    user: meshsigner-test-admin\n"
        "current-context: meshsigner-test\n"
    )


def _apply_crds(plane: Plane, crd_dir: Path, timeout: float = 60.0) -> list[str]:
    import yaml  # PyYAML, a project dependency
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    api_client = config.new_client_from_config(config_file=plane.kubeconfig)
    try:
        ext = client.ApiextensionsV1Api(api_client)
        names = []
        for f in sorted(crd_dir.glob("*.yaml")):
            for doc in yaml.safe_load_all(f.read_text()):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                name = doc["metadata"]["name"]
                try:
                    ext.create_custom_resource_definition(doc)
                except ApiException as e:
                    if e.status != 409:
                        raise
                    ext.patch_custom_resource_definition(name, doc)
                names.append(name)
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                crd = ext.read_custom_resource_definition(name)
                conds = {c.type: c.status for c in (crd.status.conditions or [])} if crd.status else {}
                if conds.get("Established") == "True":
                    pending.discard(name)
            if pending:
                time.sleep(0.25)
        if pending:
            raise PlaneError(f"CRDs not Established after {timeout}s: {sorted(pending)}")
        core = client.CoreV1Api(api_client)
        try:
            core.create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=plane.cluster_resource_namespace))
            )
        except ApiException as e:
            if e.status != 409:
                raise
        return names
    finally:
        api_client.close()


def _stop_procs(plane: Plane) -> None:
    for name in ("cm-controller", "kube-apiserver", "etcd"):
        p = plane.procs.get(name)
        if p:
            p.stop()


def _start(auto_started: bool) -> Plane:
    t0 = time.monotonic()
    env = binaries()
    missing = missing_binaries(env)
    if missing:
        raise PlaneError(
            "test control plane binaries are not built: "
            + ", ".join(missing)
            + "\nrun `bash tests/cluster/build.sh` (first build takes a while; `make test` runs it)"
        )
    d = cluster_dir()
    if d.exists():
        shutil.rmtree(d)
    (d / "logs").mkdir(parents=True)
    (d / "etcd").mkdir(mode=0o700)
    files = _write_pki(d / "pki")
    etcd_port, etcd_peer, api_port, cm_health, cm_metrics = (free_port() for _ in range(5))
    api_url = f"https://{LOOPBACK}:{api_port}"
    plane = Plane(
        dir=str(d),
        kubeconfig=str(d / "kubeconfig"),
        api_server_url=api_url,
        ca_cert_path=str(files["ca.crt"]),
        admin_cert_path=str(files["admin.crt"]),
        admin_key_path=str(files["admin.key"]),
        sa_key_path=str(files["sa.key"]),
        sa_pub_path=str(files["sa.pub"]),
        service_account_issuer=api_url,
        etcd_url=f"http://{LOOPBACK}:{etcd_port}",
        etcd_port=etcd_port,
        api_port=api_port,
        cm_healthz_port=cm_health,
        cm_metrics_port=cm_metrics,
        cluster_resource_namespace=CLUSTER_RESOURCE_NAMESPACE,
        versions={
            "kube-apiserver": env["KUBE_VERSION"],
            "etcd": env["ETCD_VERSION"],
            "cert-manager": env["CERT_MANAGER_VERSION"],
            "go": env["GO_VERSION"],
        },
        auto_started=auto_started,
        started_at=time.time(),
    )
    Path(plane.kubeconfig).write_text(_kubeconfig(api_url, files["ca.crt"], files["admin.crt"], files["admin.key"]))
    peer = f"http://{LOOPBACK}:{etcd_peer}"
    plane.procs["etcd"] = Proc(
        "etcd",
        [
            env["ETCD_BIN"],
            "--name=meshsigner-test",
            f"--data-dir={d / 'etcd'}",
            f"--listen-client-urls={plane.etcd_url}",
            f"--advertise-client-urls={plane.etcd_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=meshsigner-test={peer}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        str(d / "logs" / "etcd.log"),
    )
    plane.procs["kube-apiserver"] = Proc(
        "kube-apiserver",
        [
            env["KUBE_APISERVER_BIN"],
            f"--etcd-servers={plane.etcd_url}",
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            f"--secure-port={api_port}",
            f"--cert-dir={d / 'pki'}",
            f"--tls-cert-file={files['apiserver.crt']}",
            f"--tls-private-key-file={files['apiserver.key']}",
            f"--client-ca-file={files['ca.crt']}",
            f"--service-account-issuer={api_url}",
            f"--service-account-key-file={files['sa.pub']}",
            f"--service-account-signing-key-file={files['sa.key']}",
            "--authorization-mode=RBAC",
            "--disable-admission-plugins=ServiceAccount",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=true",
            # ClusterTrustBundle (beta: off unless both are on), for meshsigner's --cluster-trust-bundle-name
            "--feature-gates=ClusterTrustBundle=true",
            "--runtime-config=certificates.k8s.io/v1beta1/clustertrustbundles=true",
            "--profiling=false",
            "--v=1",
        ],
        str(d / "logs" / "kube-apiserver.log"),
    )
    cm_argv = [
        env["CM_CONTROLLER_BIN"],
        f"--kubeconfig={plane.kubeconfig}",
        f"--cluster-resource-namespace={CLUSTER_RESOURCE_NAMESPACE}",
        f"--healthz-listen-address={LOOPBACK}:{cm_health}",
        f"--metrics-listen-address={LOOPBACK}:{cm_metrics}",
        "--v=2",
    ]
    if os.environ.get("MESHSIGNER_CM_AUTO_APPROVE") in ("1", "true"):
        cm_argv.append("--auto-approve")
    else:
        cm_argv.append("--auto-approve=false")
    plane.procs["cm-controller"] = Proc("cm-controller", cm_argv, str(d / "logs" / "cm-controller.log"))

    try:
        plane.save()
        log(f"starting etcd {env['ETCD_VERSION']} on {plane.etcd_url}")
        plane.procs["etcd"].start()
        plane.save()
        plane.procs["etcd"].wait_until(plane.etcd_healthy, 30, "/health")
        log(f"starting kube-apiserver {env['KUBE_VERSION']} on {api_url}")
        plane.procs["kube-apiserver"].start()
        plane.save()
        plane.procs["kube-apiserver"].wait_until(plane.apiserver_ready, 240, "/readyz")
        log(f"kube-apiserver ready after {time.monotonic() - t0:.1f}s; applying cert-manager CRDs")
        crds = _apply_crds(plane, Path(env["CM_CRDS_DIR"]))
        log(f"{len(crds)} CRDs Established; starting cm-controller (cert-manager {env['CERT_MANAGER_VERSION']})")
        plane.procs["cm-controller"].start()
        plane.save()
        plane.procs["cm-controller"].wait_until(plane.cm_ready, 90, "/readyz")
    except BaseException:
        _stop_procs(plane)
        plane.save()
        raise
    plane.startup_seconds = round(time.monotonic() - t0, 1)
    plane.save()
    log(f"ready in {plane.startup_seconds}s; kubeconfig: {plane.kubeconfig}")
    return plane


def up(auto_started: bool = False, register_pid: int | None = None) -> tuple[Plane, bool]:
    """Start the plane, or reuse a healthy running one. Returns (plane, started_now).

    ``register_pid`` records that process as a user of the plane under the same lock (see release_user).
    """
    with plane_lock():
        plane = load()
        started = False
        if plane is not None and not plane.healthy() and any(p.alive() for p in plane.procs.values()):
            # Partly running: maybe still starting, or a fault test has stopped the apiserver for a moment.
            # Give it a minute before starting over (which would wipe the state other sessions use).
            log("recorded plane is partly running; waiting up to 60s for it to become healthy")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not plane.healthy():
                time.sleep(1)
                plane = load() or plane
        if plane is not None and plane.healthy():
            log(f"reusing running plane at {plane.api_server_url} (kubeconfig {plane.kubeconfig})")
            if plane.auto_started and not auto_started:
                # Someone asked for the plane explicitly (make cluster): test sessions must not stop it.
                plane.auto_started = False
                plane.save()
        else:
            if plane is not None:
                log("recorded plane is not healthy; restarting it")
                _stop_procs(plane)
            plane, started = _start(auto_started), True
        if register_pid:
            register_user(register_pid)
        return plane, started


def down() -> bool:
    """Stop the processes and remove .cluster/. Returns whether a plane was recorded."""
    with plane_lock():
        plane = load()
        users = cluster_dir() / "users"
        entries = list(users.iterdir()) if users.exists() else []
        live = [f.name for f in entries if f.name.isdigit() and _pid_alive(int(f.name))]
        if live:
            log(f"warning: pytest sessions {', '.join(live)} are using this plane; stopping it anyway")
        if plane is not None:
            _stop_procs(plane)
        d = cluster_dir()
        if d.exists():
            shutil.rmtree(d)
        return plane is not None


# ----- users: pytest sessions that share a plane -----


def register_user(pid: int) -> Path:
    users = cluster_dir() / "users"
    users.mkdir(parents=True, exist_ok=True)
    p = users / str(pid)
    p.write_text(str(time.time()))
    return p


def release_user(stop_if_last: bool, pid: int | None = None) -> None:
    """Drop the registration of ``pid`` (default: this process); if ``stop_if_last``, stop the plane
    when no other live process is registered."""
    with plane_lock():
        users = cluster_dir() / "users"
        me = users / str(pid or os.getpid())
        with contextlib.suppress(FileNotFoundError):
            me.unlink()
        if not stop_if_last:
            return
        others = []
        if users.exists():
            for f in users.iterdir():
                if f.name.isdigit() and _pid_alive(int(f.name)):
                    others.append(f.name)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        f.unlink()
        if others:
            log(f"leaving the plane running for other sessions: pids {', '.join(others)}")
            return
        plane = load()
        if plane is not None:
            _stop_procs(plane)
        d = cluster_dir()
        if d.exists():
            shutil.rmtree(d)
        log("stopped the plane this session started")


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "status"
    try:
        if cmd == "up":
            reg = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("--register-pid=")), None)
            plane, started = up(auto_started="--for-tests" in argv, register_pid=reg)
            print(f"kubeconfig: {plane.kubeconfig}")
            print(f"api server: {plane.api_server_url} (kube-apiserver {plane.versions['kube-apiserver']})")
            if started:
                print(f"started in {plane.startup_seconds}s")
            return 0
        if cmd == "down":
            print("stopped" if down() else "no plane was running")
            return 0
        if cmd == "status":
            recorded = load()
            if recorded is None:
                print("no plane recorded")
                return 1
            ok = recorded.healthy()
            print(json.dumps({"healthy": ok, **asdict(recorded)}, indent=2))
            return 0 if ok else 1
    except PlaneError as e:
        log(f"ERROR: {e}")
        return 1
    print(f"usage: {argv[0]} up|down|status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
