"""Which client function serves which resource: the core group's typed functions or the custom-object ones.

Each function returns the client function to call and its positional arguments; keyword arguments (selectors,
watch options) are the caller's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes import client

from bridge.kube.resources import Resource

Call = tuple[Callable[..., Any], tuple[Any, ...]]


def _namespace_required(namespace: str | None, resource: Resource) -> str:
    if not namespace:
        raise ValueError(f"{resource.plural} is namespaced: a namespace is required")
    return namespace


def list_call(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, resource: Resource, namespace: str | None
) -> Call:
    """The list (and watch: same function, ``watch=True``) call for ``resource`` in ``namespace`` (None: all)."""
    r = resource
    if not r.is_core:
        if r.namespaced and namespace is not None:
            return custom.list_namespaced_custom_object, (r.group, r.version, namespace, r.plural)
        return custom.list_cluster_custom_object, (r.group, r.version, r.plural)  # a namespaced one: every namespace
    if r.plural == "namespaces":
        return core.list_namespace, ()
    if r.plural == "pods":
        if namespace is None:
            return core.list_pod_for_all_namespaces, ()
        return core.list_namespaced_pod, (namespace,)
    if r.plural == "configmaps":
        if namespace is None:
            return core.list_config_map_for_all_namespaces, ()
        return core.list_namespaced_config_map, (namespace,)
    if r.plural == "serviceaccounts":
        if namespace is None:
            return core.list_service_account_for_all_namespaces, ()
        return core.list_namespaced_service_account, (namespace,)
    if r.plural == "secrets":
        return core.list_namespaced_secret, (_namespace_required(namespace, r),)
    raise ValueError(f"the Kubernetes seam does not serve core {r.plural}")


def core_read_call(core: client.CoreV1Api, resource: Resource, namespace: str | None) -> Call:
    """The core-group read call; its positional arguments follow the object's name."""
    if resource.plural == "namespaces":
        return core.read_namespace, ()
    if resource.plural == "pods":
        return core.read_namespaced_pod, (_namespace_required(namespace, resource),)
    if resource.plural == "configmaps":
        return core.read_namespaced_config_map, (_namespace_required(namespace, resource),)
    if resource.plural == "secrets":
        return core.read_namespaced_secret, (_namespace_required(namespace, resource),)
    raise ValueError(f"the Kubernetes seam does not serve core {resource.plural}")
