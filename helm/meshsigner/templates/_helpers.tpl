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
{{- define "meshsigner.runtimeConfigMap" -}}
{{- if and (eq .Values.app.signer "cert-manager") .Values.app.runtimeConfiguration.name }}true{{ end -}}
{{- end -}}
{{- define "meshsigner.istiodCertificate" -}}
{{- if and (eq .Values.app.signer "cert-manager") (eq (toString .Values.app.tls.istiodCertificateEnable) "true") }}true{{ end -}}
{{- end -}}

{{/* Refuse values meshsigner cannot honour rather than install something that silently differs. */}}
{{- define "meshsigner.validate" -}}
{{- if not (has .Values.app.signer (list "local" "cert-manager")) -}}
{{- fail (printf "app.signer=%s is not available in this meshsigner version (local or cert-manager)" .Values.app.signer) -}}
{{- end -}}
{{- if eq (toString .Values.app.tls.istiodCertificateEnable) "dynamic" -}}
{{- fail "app.tls.istiodCertificateEnable=dynamic is not available in this meshsigner version: use true (a static Certificate) or false" -}}
{{- end -}}
{{- if .Values.app.server.authenticators.enableClientCert -}}
{{- fail "app.server.authenticators.enableClientCert: meshsigner does not authenticate by client certificate; workloads authenticate with their service-account token" -}}
{{- end -}}
{{- if and (eq .Values.app.server.authenticator "jwks") (not (and .Values.app.server.jwks.file .Values.app.server.jwks.issuer)) -}}
{{- fail "app.server.authenticator=jwks needs app.server.jwks.file and app.server.jwks.issuer" -}}
{{- end -}}
{{- if contains "cert-manager-istio-csr" (include "meshsigner.image" .) -}}
{{- fail (printf "image %s is istio-csr's, not meshsigner's: set image.repository (and image.tag) to meshsigner's image" (include "meshsigner.image" .)) -}}
{{- end -}}
{{- if and (eq .Values.app.signer "local") (not .Values.app.local.caSecretName) (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) -}}
{{- fail "app.signer=local with more than one replica needs app.local.caSecretName: each pod would otherwise create its own CA" -}}
{{- end -}}
{{- end -}}
