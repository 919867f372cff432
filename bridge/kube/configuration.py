"""How the seam reaches the API server: kubeconfig or in-cluster configuration, and the client's own settings."""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes import client, config

from bridge.kube.errors import KubeError


@dataclass(frozen=True)
class KubeOptions:
    kubeconfig: str = ""  # empty: in-cluster configuration
    qps: float = 50.0
    burst: int = 100
    rate_limiter: bool = True
    token_review_share: float = 0.2  # of qps and burst, for TokenReviews and OIDC discovery (rate_limit.py)
    threads: int = 32


def load_configuration(options: KubeOptions) -> client.Configuration:
    configuration = client.Configuration()
    try:
        if options.kubeconfig:
            # the kubernetes package's configuration loaders carry no annotations
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=options.kubeconfig, client_configuration=configuration
            )
        else:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError, TypeError, ValueError) as exc:  # a bad file, not a bug of ours
        where = f"--kubeconfig {options.kubeconfig}" if options.kubeconfig else "in-cluster configuration"
        raise KubeError(0, f"{where}: {exc}") from None
    configuration.connection_pool_maxsize = options.threads + 4  # the watch threads get their own connections
    configuration.retries = False  # retrying is the caller's decision, not urllib3's
    return configuration
