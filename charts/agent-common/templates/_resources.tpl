{{/* The smaller objects around the Deployment. */}}

{{- define "agent-common.service" -}}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "agent-common.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "agent-common.labels" . | nindent 4 }}
  annotations:
    {{- if .Values.tls.enabled }}
    projectcontour.io/upstream-protocol.tls: grpc
    {{- else }}
    # Ingress controllers that proxy to the Service must speak cleartext HTTP/2 (gRPC).
    projectcontour.io/upstream-protocol.h2c: grpc
    {{- end }}
    {{- with .Values.service.annotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  type: {{ .Values.service.type }}
  selector:
    {{- include "agent-common.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ .Values.service.port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: {{ if .Values.tls.enabled }}https{{ else }}kubernetes.io/h2c{{ end }}
    {{- if .Values.metrics.enabled }}
    - name: metrics
      port: {{ .Values.metrics.port }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
    {{- end }}
{{- end }}

{{- define "agent-common.serviceaccount" -}}
{{- if .Values.serviceAccount.create }}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "agent-common.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "agent-common.labels" . | nindent 4 }}
  {{- with .Values.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
{{- end }}
{{- end }}

{{/* The agent's configuration file (see each agent's README for its keys). */}}
{{- define "agent-common.configmap" -}}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "agent-common.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "agent-common.labels" . | nindent 4 }}
data:
  config.yaml: |
    {{- toYaml .Values.config | nindent 4 }}
{{- end }}

{{/* Only when the values carry the secrets; otherwise an existing Secret is mounted. */}}
{{- define "agent-common.secret" -}}
{{- if and .Values.secrets.data (not .Values.secrets.existingSecret) }}
---
apiVersion: v1
kind: Secret
metadata:
  name: {{ include "agent-common.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "agent-common.labels" . | nindent 4 }}
type: Opaque
stringData:
  {{- range $key, $value := .Values.secrets.data }}
  {{- /* Flyte's file layout: lower-case keys, one file each. */}}
  {{ lower $key }}: {{ $value | quote }}
  {{- end }}
{{- end }}
{{- end }}

{{/*
The autoscaler: CPU and memory utilisation, and the gRPC calls each pod serves
(flyte_agent_requests_in_flight, a Pods metric a metrics adapter such as prometheus-adapter
serves), in any combination; at least one, since an HPA without metrics would quietly fall
back to Kubernetes' default of 80% CPU.
*/}}
{{- define "agent-common.hpa" -}}
{{- if .Values.autoscaling.enabled }}
{{- $a := .Values.autoscaling }}
{{- $inFlight := $a.callsInFlight | default dict }}
{{- if not (or $a.targetCPUUtilizationPercentage $a.targetMemoryUtilizationPercentage $inFlight.enabled) }}
{{- fail "autoscaling.enabled: give the autoscaler a metric (targetCPUUtilizationPercentage, targetMemoryUtilizationPercentage or callsInFlight.enabled)" }}
{{- end }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "agent-common.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "agent-common.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "agent-common.fullname" . }}
  minReplicas: {{ .Values.autoscaling.minReplicas }}
  maxReplicas: {{ .Values.autoscaling.maxReplicas }}
  metrics:
    {{- with .Values.autoscaling.targetCPUUtilizationPercentage }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
    {{- with .Values.autoscaling.targetMemoryUtilizationPercentage }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
    {{- if $inFlight.enabled }}
    {{- $target := required "autoscaling.callsInFlight.targetAverageValue: calls in flight per pod to scale at" $inFlight.targetAverageValue }}
    - type: Pods
      pods:
        metric:
          name: flyte_agent_requests_in_flight
        target:
          type: AverageValue
          averageValue: {{ if kindIs "string" $target }}{{ $target | quote }}{{ else }}{{ $target | int64 | quote }}{{ end }}
    {{- end }}
{{- end }}
{{- end }}

{{- define "agent-common.pdb" -}}
{{- if .Values.podDisruptionBudget.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "agent-common.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "agent-common.labels" . | nindent 4 }}
spec:
  {{- if .Values.podDisruptionBudget.minAvailable }}
  minAvailable: {{ .Values.podDisruptionBudget.minAvailable }}
  {{- else }}
  maxUnavailable: {{ .Values.podDisruptionBudget.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "agent-common.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}

{{/*
The prometheus-operator objects, a ServiceMonitor or a PodMonitor: "agent-common.all" renders
both through this one part.
*/}}
{{- define "agent-common.servicemonitor" -}}
{{- $pm := .Values.metrics.podMonitor | default dict }}
{{- if and .Values.metrics.enabled .Values.metrics.serviceMonitor.enabled $pm.enabled }}
{{- fail "metrics.serviceMonitor.enabled and metrics.podMonitor.enabled: choose one; both would scrape every pod twice" }}
{{- end }}
{{- include "agent-common.servicemonitorObject" . }}
{{- include "agent-common.podmonitor" . }}
{{- end }}

{{/*
prometheus-operator gives every target an `endpoint` label (the port's name, here always
"metrics"); the agents' per-service metrics carry their own `endpoint` (host:port), which
Prometheus would then rename to exported_endpoint. Dropping the target's keeps the agents'.
*/}}
{{- define "agent-common.dropEndpointLabel" -}}
- action: labeldrop
  regex: endpoint
{{- end }}

{{- define "agent-common.servicemonitorObject" -}}
{{- if and .Values.metrics.enabled .Values.metrics.serviceMonitor.enabled }}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "agent-common.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "agent-common.labels" . | nindent 4 }}
    {{- with .Values.metrics.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "agent-common.selectorLabels" . | nindent 6 }}
  endpoints:
    - port: metrics
      path: /metrics
      interval: {{ .Values.metrics.serviceMonitor.interval }}
      scrapeTimeout: {{ .Values.metrics.serviceMonitor.scrapeTimeout }}
      relabelings:
        {{- include "agent-common.dropEndpointLabel" . | nindent 8 }}
{{- end }}
{{- end }}

{{/*
Scrapes the pods' metrics container port directly (no Service port involved). The job label
is set to the Service's name, the job a ServiceMonitor gives, so queries do not depend on
which of the two scraped the pods.
*/}}
{{- define "agent-common.podmonitor" -}}
{{- $pm := .Values.metrics.podMonitor | default dict }}
{{- if and .Values.metrics.enabled $pm.enabled }}
---
apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata:
  name: {{ include "agent-common.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "agent-common.labels" . | nindent 4 }}
    {{- with $pm.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "agent-common.selectorLabels" . | nindent 6 }}
  podMetricsEndpoints:
    - port: metrics
      path: /metrics
      interval: {{ $pm.interval | default "30s" }}
      scrapeTimeout: {{ $pm.scrapeTimeout | default "10s" }}
      relabelings:
        {{- include "agent-common.dropEndpointLabel" . | nindent 8 }}
        - action: replace
          targetLabel: job
          replacement: {{ include "agent-common.fullname" . }}
{{- end }}
{{- end }}
