{{- define "meshsigner.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meshsigner.labels" -}}
app.kubernetes.io/name: {{ include "meshsigner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "meshsigner.selector" -}}
app.kubernetes.io/name: {{ include "meshsigner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
