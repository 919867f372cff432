"""Authentication of the calling workload: bearer token extraction and pluggable token verifiers."""

from signer.auth.base import Authenticator, WorkloadIdentity, bearer_token, check_cluster_id

__all__ = ["Authenticator", "WorkloadIdentity", "bearer_token", "check_cluster_id"]
