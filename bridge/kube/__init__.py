"""The one door to the Kubernetes API: the only package that imports ``kubernetes``.

- :mod:`bridge.kube.errors`: the KubeError tree and what is (and is not) translated into it;
- :mod:`bridge.kube.configuration`: kubeconfig or in-cluster configuration (:class:`KubeOptions`);
- :mod:`bridge.kube.rate_limit`: the token buckets in front of every request, one per budget (reviews, the rest);
- :mod:`bridge.kube.metrics`: request and watch-restart counters;
- :mod:`bridge.kube.resources`: the resources served and their REST paths;
- :mod:`bridge.kube.client`: :class:`KubeClient`, async methods over a bounded thread pool;
- :mod:`bridge.kube.list_watch`: :class:`ListWatch`, the list+watch loop the caches and the CertificateRequest
  watch share.

Callers import from ``bridge.kube`` (this module), not from the submodules.
"""

from bridge.kube.client import AccessReview, KubeClient
from bridge.kube.configuration import KubeOptions
from bridge.kube.errors import (
    KubeConflict,
    KubeError,
    KubeForbidden,
    KubeGone,
    KubeInvalid,
    KubeNotFound,
    KubeUnavailable,
    as_kube_error,
)
from bridge.kube.list_watch import ListWatch, WatchHandler, WatchLine, WatchSource, parse_watch_line
from bridge.kube.metrics import KubeMetrics
from bridge.kube.rate_limit import Budget, TokenBucket, split_budgets
from bridge.kube.resources import (
    CERTIFICATE_REQUESTS,
    CERTIFICATE_SIGNING_REQUESTS,
    CERTIFICATES,
    CM_GROUP,
    CONFIG_MAPS,
    CSR_GROUP,
    CTB_VERSIONS,
    LEASES,
    NAMESPACES,
    PODS,
    SECRETS,
    SERVICE_ACCOUNTS,
    Obj,
    Resource,
    cluster_trust_bundles,
    issuer_resource,
    object_path,
)

__all__ = [
    "CERTIFICATES",
    "CERTIFICATE_REQUESTS",
    "CERTIFICATE_SIGNING_REQUESTS",
    "CM_GROUP",
    "CONFIG_MAPS",
    "CSR_GROUP",
    "CTB_VERSIONS",
    "LEASES",
    "NAMESPACES",
    "PODS",
    "SECRETS",
    "SERVICE_ACCOUNTS",
    "AccessReview",
    "Budget",
    "KubeClient",
    "KubeConflict",
    "KubeError",
    "KubeForbidden",
    "KubeGone",
    "KubeInvalid",
    "KubeMetrics",
    "KubeNotFound",
    "KubeOptions",
    "KubeUnavailable",
    "ListWatch",
    "Obj",
    "Resource",
    "TokenBucket",
    "WatchHandler",
    "WatchLine",
    "WatchSource",
    "as_kube_error",
    "cluster_trust_bundles",
    "issuer_resource",
    "object_path",
    "parse_watch_line",
    "split_budgets",
]
