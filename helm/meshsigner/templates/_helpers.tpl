{{- define "meshsigner.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meshsigner.labels" -}}
app.kubernetes.io/name: {{ include "meshsigner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- /* The RoleBinding of the release's ServiceAccount to the Role of the same name:
(dict "root" $ "role" ROLE_NAME "namespace" NAMESPACE). */ -}}
{{- define "meshsigner.roleBinding" -}}
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ .role }}
  namespace: {{ .namespace }}
  labels: {{- include "meshsigner.labels" .root | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ .role }}
subjects:
  - kind: ServiceAccount
    name: {{ include "meshsigner.name" .root }}
    namespace: {{ .root.Release.Namespace }}
{{- end -}}

{{- define "meshsigner.selector" -}}
app.kubernetes.io/name: {{ include "meshsigner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* image.repository, or istio-csr's imageRegistry/imageNamespace/image.name; digest wins over tag. */}}
{{- define "meshsigner.image" -}}
{{- $repository := .Values.image.repository -}}
{{- if not $repository -}}
{{- $repository = join "/" (compact (list (.Values.image.registry | default .Values.imageRegistry) .Values.imageNamespace .Values.image.name)) -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{ $repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ $repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* Features the rendered RBAC follows. */}}
{{- define "meshsigner.certManager" -}}{{ if eq .Values.app.signer "cert-manager" }}true{{ end }}{{- end -}}
{{- define "meshsigner.kubernetesCSR" -}}{{ if eq .Values.app.signer "kubernetes-csr" }}true{{ end }}{{- end -}}
{{- /* The audit mirror (--mirror-certificate-signing-requests): cert-manager and local signers only (validated). */ -}}
{{- define "meshsigner.mirror" -}}
{{- if and .Values.app.mirror.enabled (not (include "meshsigner.kubernetesCSR" .)) }}true{{ end -}}
{{- end -}}
{{- define "meshsigner.runtimeConfigMap" -}}
{{- if and (eq .Values.app.signer "cert-manager") .Values.app.runtimeConfiguration.name }}true{{ end -}}
{{- end -}}
{{- /* Authentication: a TokenReview per new token, or offline against the cluster's own keys (jwks without a file:
pods and service accounts watched). Both read the cluster's OIDC discovery (the pre-screen uses its keys too). */ -}}
{{- define "meshsigner.tokenReview" -}}{{ if eq .Values.app.server.authenticator "tokenreview" }}true{{ end }}{{- end -}}
{{- define "meshsigner.clusterJwks" -}}
{{- if and (eq .Values.app.server.authenticator "jwks") (not .Values.app.server.jwks.file) }}true{{ end -}}
{{- end -}}
{{- define "meshsigner.oidcDiscovery" -}}
{{- if or (include "meshsigner.tokenReview" .) (include "meshsigner.clusterJwks" .) }}true{{ end -}}
{{- end -}}
{{- define "meshsigner.podCache" -}}
{{- if or (include "meshsigner.clusterJwks" .) .Values.app.server.caTrustedNodeAccounts }}true{{ end -}}
{{- end -}}

{{/* Whole seconds (rounded up) of a duration such as 30s, 1m30s or 1d (the schema admits only those forms). */}}
{{- define "meshsigner.seconds" -}}
{{- $total := 0.0 -}}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?(ms|s|m|h|d)" (toString .) -1 -}}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" . -}}
{{- $unit := trimPrefix $number . -}}
{{- $scale := get (dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0) $unit -}}
{{- $total = addf $total (mulf (float64 $number) $scale) -}}
{{- end -}}
{{- ceil $total | int -}}
{{- end -}}

{{/* preStop sleep, then SIGTERM: the drain (up to app.shutdownGracePeriod), then 10 s for the shutdown hooks (5 s
each at most), the worker processes' exit and the last CertificateRequest deletes. */}}
{{- define "meshsigner.minimumTerminationGracePeriod" -}}
{{- add (int .Values.preStopSleepSeconds) (include "meshsigner.seconds" .Values.app.shutdownGracePeriod | int) 10 -}}
{{- end -}}
{{- define "meshsigner.terminationGracePeriod" -}}
{{- $minimum := include "meshsigner.minimumTerminationGracePeriod" . | int -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- $minimum -}}
{{- else -}}
{{- int .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{- /* istiod's certificate: "true" is the chart's static Certificate (cert-manager signer only); "dynamic" is
meshsigner's leader keeping it (--istiod-cert-enabled): a Certificate with cert-manager, the Secret with local. */ -}}
{{- define "meshsigner.istiodCertificate" -}}
{{- if and (eq .Values.app.signer "cert-manager") (eq (toString .Values.app.tls.istiodCertificateEnable) "true") }}true{{ end -}}
{{- end -}}
{{- define "meshsigner.istiodDynamic" -}}
{{- if and (include "meshsigner.clusterDuties" .) (eq (toString .Values.app.tls.istiodCertificateEnable) "dynamic") }}true{{ end -}}
{{- end -}}
{{- define "meshsigner.istiodKeyAlgorithm" -}}
{{- .Values.app.tls.istiodPrivateKeyAlgorithm | default .Values.app.server.serving.signatureAlgorithm -}}
{{- end -}}

{{- /* Cluster duties (docs/cluster-duties.md): they run when the pod talks to the Kubernetes API at all (the
cert-manager signer, TokenReviews, or the cluster's own keys) and app.controller.clusterDuties is on: the Lease, then,
while leading, the root ConfigMaps everywhere (always), the ClusterTrustBundle (when named) and istiod's certificate
("dynamic"). */ -}}
{{- define "meshsigner.kubeAccess" -}}
{{- if or (include "meshsigner.certManager" .) (include "meshsigner.kubernetesCSR" .) (include "meshsigner.tokenReview" .) (include "meshsigner.clusterJwks" .) (include "meshsigner.mirror" .) (include "meshsigner.policyObjects" .) }}true{{ end -}}
{{- end -}}
{{- define "meshsigner.policyObjects" -}}{{ if eq .Values.app.policySource "kubernetes" }}true{{ end }}
{{- end -}}
{{- /* samplePolicies.enabled: istio-csr's behaviour made explicit as one IdentityPolicy (each service account its
own SPIFFE ID, at most 24h). No PolicySettings: it is a singleton the operator may already own. */ -}}
{{- define "meshsigner.samplePolicy" -}}
apiVersion: meshsigner.io/v1alpha1
kind: IdentityPolicy
metadata:
  name: sample-own-identity
  annotations:
    meshsigner.io/rationale: "istio-csr's behaviour made explicit: each service account may hold its own SPIFFE ID, for at most 24h"
spec:
  mode: Enforce
  subjects:
    namespaces: ["*"]
  rules:
    - name: own-identity
      effect: Allow
      identities: ["spiffe://{trustDomain}/ns/{namespace}/sa/{serviceAccount}"]
      duration: {max: 24h, onExceed: Clamp}
{{- end -}}
{{- /* The policy directory's files (app.policySource=directory): app.policies, and the sample when enabled. */ -}}
{{- define "meshsigner.policyFiles" -}}
{{- $files := deepCopy (.Values.app.policies | default dict) -}}
{{- if and .Values.samplePolicies.enabled (not (include "meshsigner.policyObjects" .)) -}}
{{- $_ := set $files "sample-policies.yaml" (include "meshsigner.samplePolicy" .) -}}
{{- end -}}
{{- toYaml $files -}}
{{- end -}}
{{- define "meshsigner.clusterDuties" -}}
{{- if and .Values.app.controller.clusterDuties (include "meshsigner.kubeAccess" .) }}true{{ end -}}
{{- end -}}
{{- define "meshsigner.clusterTrustBundle" -}}
{{- if and (include "meshsigner.clusterDuties" .) .Values.app.controller.clusterTrustBundleName }}true{{ end -}}
{{- end -}}
{{- /* A ClusterTrustBundle named <domain>:<path>:<suffix> is linked to signer <domain>/<path>. */ -}}
{{- define "meshsigner.clusterTrustBundleSigner" -}}
{{- $parts := splitList ":" .Values.app.controller.clusterTrustBundleName -}}
{{- if ge (len $parts) 3 }}{{ index $parts 0 }}/{{ index $parts 1 }}{{ end -}}
{{- end -}}

{{/* Refuse values meshsigner cannot honour rather than install something that silently differs. */}}
{{- define "meshsigner.validate" -}}
{{- if not (has .Values.app.signer (list "local" "cert-manager" "kubernetes-csr")) -}}
{{- fail (printf "app.signer=%s is not available in this meshsigner version (local, cert-manager or kubernetes-csr)" .Values.app.signer) -}}
{{- end -}}
{{- if and (include "meshsigner.policyObjects" .) .Values.app.policies -}}
{{- fail "app.policies is for app.policySource=directory: with kubernetes the policies are IdentityPolicy and PolicySettings objects (kubectl apply them)" -}}
{{- end -}}
{{- if and .Values.samplePolicies.enabled (hasKey (.Values.app.policies | default dict) "sample-policies.yaml") -}}
{{- fail "app.policies[sample-policies.yaml] is the file samplePolicies.enabled writes: rename yours or disable the sample" -}}
{{- end -}}
{{- if include "meshsigner.kubernetesCSR" . -}}
{{- if not .Values.app.signerName -}}
{{- fail "app.signer=kubernetes-csr needs app.signerName (domain/path, e.g. clusterissuers.cert-manager.io/istio-ca)" -}}
{{- end -}}
{{- if not .Values.app.tls.rootCAFile -}}
{{- fail "app.signer=kubernetes-csr needs app.tls.rootCAFile (--root-ca-file): the CSR API carries no CA to verify issued chains against; mount the root bundle with volumes/volumeMounts and set its path" -}}
{{- end -}}
{{- if .Values.app.mirror.enabled -}}
{{- fail "app.mirror.enabled is for app.signer cert-manager and local: with kubernetes-csr the requests already are CertificateSigningRequests" -}}
{{- end -}}
{{- if and (include "meshsigner.istiodDynamic" .) (lt (include "meshsigner.seconds" .Values.app.tls.istiodCertificateDuration | int) 600) -}}
{{- fail "app.tls.istiodCertificateDuration must be at least 10m with app.signer=kubernetes-csr: the Kubernetes CSR API refuses shorter certificates" -}}
{{- end -}}
{{- end -}}
{{- if and (eq (toString .Values.app.tls.istiodCertificateEnable) "dynamic") (not (include "meshsigner.clusterDuties" .)) -}}
{{- if not .Values.app.controller.clusterDuties -}}
{{- fail "app.tls.istiodCertificateEnable=dynamic is kept by the leader's cluster duties: app.controller.clusterDuties=false turns them off (use true for the chart's static Certificate, or false)" -}}
{{- else -}}
{{- fail "app.tls.istiodCertificateEnable=dynamic needs the Kubernetes API, which this configuration does not use (app.signer=local with app.server.jwks.file): use the tokenreview authenticator or jwks without a file" -}}
{{- end -}}
{{- end -}}
{{- if include "meshsigner.istiodDynamic" . -}}
{{- $algorithm := include "meshsigner.istiodKeyAlgorithm" . -}}
{{- $size := int .Values.app.tls.istiodPrivateKeySize -}}
{{- if and (eq $algorithm "RSA") $size (lt $size 2048) -}}
{{- fail (printf "app.tls.istiodPrivateKeySize=%d: RSA keys must have at least 2048 bits" $size) -}}
{{- end -}}
{{- if and (eq $algorithm "ECDSA") (not (has $size (list 0 256 384))) -}}
{{- fail (printf "app.tls.istiodPrivateKeySize=%d: ECDSA keys are 256 or 384" $size) -}}
{{- end -}}
{{- if ge (include "meshsigner.seconds" .Values.app.tls.istiodCertificateRenewBefore | int) (include "meshsigner.seconds" .Values.app.tls.istiodCertificateDuration | int) -}}
{{- fail "app.tls.istiodCertificateRenewBefore must be shorter than app.tls.istiodCertificateDuration" -}}
{{- end -}}
{{- end -}}
{{- if include "meshsigner.clusterDuties" . -}}
{{- $lease := include "meshsigner.seconds" .Values.app.controller.leaderElectionLeaseDuration | int -}}
{{- $renew := include "meshsigner.seconds" .Values.app.controller.leaderElectionRenewDeadline | int -}}
{{- $retry := include "meshsigner.seconds" .Values.app.controller.leaderElectionRetryPeriod | int -}}
{{- if not (and (gt $lease $renew) (gt $renew $retry)) -}}
{{- fail "app.controller.leaderElectionLeaseDuration must exceed leaderElectionRenewDeadline, which must exceed leaderElectionRetryPeriod" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.app.server.authenticators.enableClientCert (ne .Values.app.signer "local") (not .Values.app.tls.rootCAFile) -}}
{{- fail "app.server.authenticators.enableClientCert=true needs pinned roots to verify client certificates against: set app.tls.rootCAFile (mount the root bundle with volumes/volumeMounts), or use app.signer=local" -}}
{{- end -}}
{{- if and (eq .Values.app.server.authenticator "jwks") .Values.app.server.jwks.file (not .Values.app.server.jwks.issuer) -}}
{{- fail "app.server.authenticator=jwks with app.server.jwks.file needs app.server.jwks.issuer (the exact iss claim); without a file, the cluster's keys and issuer are used" -}}
{{- end -}}
{{- $grace := include "meshsigner.seconds" .Values.app.shutdownGracePeriod | int -}}
{{- if lt $grace 1 -}}
{{- fail (printf "app.shutdownGracePeriod=%v: use a positive Go duration such as 30s or 1m30s" .Values.app.shutdownGracePeriod) -}}
{{- end -}}
{{- $minimum := include "meshsigner.minimumTerminationGracePeriod" . | int -}}
{{- if lt (include "meshsigner.terminationGracePeriod" . | int) $minimum -}}
{{- fail (printf "terminationGracePeriodSeconds=%v is shorter than preStopSleepSeconds (%v) + app.shutdownGracePeriod (%vs) + 10 s = %v: the kubelet would kill meshsigner while it drains; leave it empty (computed) or raise it" .Values.terminationGracePeriodSeconds .Values.preStopSleepSeconds $grace $minimum) -}}
{{- end -}}
{{- if contains "cert-manager-istio-csr" (include "meshsigner.image" .) -}}
{{- fail (printf "image %s is istio-csr's, not meshsigner's: set image.repository (and image.tag) to meshsigner's image" (include "meshsigner.image" .)) -}}
{{- end -}}
{{- if and (eq .Values.app.signer "local") (not .Values.app.local.caSecretName) (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) -}}
{{- fail "app.signer=local with more than one replica needs app.local.caSecretName: each pod would otherwise create its own CA" -}}
{{- end -}}
{{- end -}}
