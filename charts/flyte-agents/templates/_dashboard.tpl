{{/*
The Grafana dashboard of the agents' metrics (dashboards/flyte-agents.json, the one copy in
the repository) as a ConfigMap Grafana's dashboard sidecar loads: it picks ConfigMaps by a
label (grafana_dashboard: "1" in kube-prometheus-stack and the grafana chart) in the
namespaces it watches, and reads a folder from an annotation if it is set up to.
*/}}
{{- define "flyte-agents.dashboardName" -}}
{{- printf "%s-dashboard" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flyte-agents.dashboard" -}}
{{- $board := .Values.grafanaDashboard }}
{{- $json := .Files.Get "dashboards/flyte-agents.json" }}
{{- if not $json }}
{{- fail "grafanaDashboard.enabled: dashboards/flyte-agents.json is missing from the chart" }}
{{- end }}
{{- /* The sidecar's label (and any other) wins over the chart's own of the same key. */}}
{{- $labels := dict
  "helm.sh/chart" (printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-")
  "app.kubernetes.io/name" .Chart.Name
  "app.kubernetes.io/instance" .Release.Name
  "app.kubernetes.io/version" (.Chart.AppVersion | trunc 63)
  "app.kubernetes.io/component" "dashboard"
  "app.kubernetes.io/part-of" "flyte"
  "app.kubernetes.io/managed-by" .Release.Service }}
{{- $labels = mergeOverwrite $labels ($board.labels | default dict) }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "flyte-agents.dashboardName" . }}
  namespace: {{ $board.namespace | default .Release.Namespace }}
  labels:
    {{- toYaml $labels | nindent 4 }}
  {{- with $board.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
data:
  flyte-agents.json: |-
    {{- $json | trimSuffix "\n" | nindent 4 }}
{{- end }}
