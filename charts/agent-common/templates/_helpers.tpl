{{/*
Names and labels. Every agent chart includes "agent-common.all" and "agent-common.notes";
the rest are the pieces they are made of.
*/}}

{{- define "agent-common.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The Service name is what Propeller's endpoint names (k8s://NAME.NAMESPACE:8000), so by
default it is the chart name alone, like flytekit's flyteagent chart; a release name that
already differs from it is kept as a prefix so two releases can coexist.
*/}}
{{- define "agent-common.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "agent-common.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "agent-common.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agent-common.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "agent-common.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "agent-common.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: flyte-agent
app.kubernetes.io/part-of: flyte
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "agent-common.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agent-common.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret mounted at the secrets path: an existing one, or the chart's own. */}}
{{- define "agent-common.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else if .Values.secrets.data }}
{{- include "agent-common.fullname" . }}
{{- end }}
{{- end }}

{{- define "agent-common.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The agent's task types, from the chart's annotations (facts of the binary, not values). */}}
{{- define "agent-common.asyncTaskTypes" -}}
{{- $types := index .Chart.Annotations "agents.flyte.org/async-task-types" | default "" }}
{{- range $t := splitList "," $types }}{{ if $t }}{{ $t | trim }},{{ end }}{{ end }}
{{- end }}

{{- define "agent-common.syncTaskTypes" -}}
{{- $types := index .Chart.Annotations "agents.flyte.org/sync-task-types" | default "" }}
{{- range $t := splitList "," $types }}{{ if $t }}{{ $t | trim }},{{ end }}{{ end }}
{{- end }}

{{/* Everything an agent chart renders, in one include; parts switched off leave no trace. */}}
{{- define "agent-common.all" -}}
{{- $docs := list }}
{{- range $part := list "serviceaccount" "secret" "configmap" "deployment" "service" "hpa" "pdb" "servicemonitor" }}
{{- $doc := include (printf "agent-common.%s" $part) $ | trim }}
{{- if $doc }}{{ $docs = append $docs $doc }}{{ end }}
{{- end }}
{{- join "\n" $docs }}
{{- end }}
