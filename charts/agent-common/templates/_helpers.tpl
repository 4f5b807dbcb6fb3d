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

{{/*
Everything an agent chart renders, in one include; parts switched off leave no trace. The
parts see the values with the umbrella chart's globals applied (see "agent-common.scope").
*/}}
{{- define "agent-common.all" -}}
{{- $ctx := dict }}
{{- include "agent-common.scope" (dict "ctx" . "out" $ctx) }}
{{- $docs := list }}
{{- range $part := list "serviceaccount" "secret" "configmap" "deployment" "service" "hpa" "pdb" "servicemonitor" }}
{{- $doc := include (printf "agent-common.%s" $part) $ctx | trim }}
{{- if $doc }}{{ $docs = append $docs $doc }}{{ end }}
{{- end }}
{{- join "\n" $docs }}
{{- end }}

{{/*
Settings the flyte-agents umbrella chart shares through Helm's `global:` values. A standalone
agent chart has no globals, so its values pass through unchanged.

"agent-common.scope" fills .out with the template context .ctx whose Values are a copy with
the globals applied:
  global.image.registry     replaces what precedes the image name in every image.repository
  global.image.tag          the tag of every agent that sets no image.tag of its own
  global.imagePullSecrets   for every agent that lists none of its own
  global.tls, global.metrics, global.propeller
                            laid over every agent's own tls, metrics and propeller, key by key
                            (a key set under global wins, false and "" included)
*/}}
{{- define "agent-common.scope" -}}
{{- range $key, $value := .ctx }}
{{- $_ := set $.out $key $value }}
{{- end }}
{{- $values := deepCopy .ctx.Values }}
{{- include "agent-common.applyGlobals" $values }}
{{- $_ := set .out "Values" $values }}
{{- end }}

{{- define "agent-common.applyGlobals" -}}
{{- $v := . }}
{{- $g := get $v "global" }}
{{- if kindIs "map" $g }}
{{- $image := get $g "image" }}
{{- if kindIs "map" $image }}
{{- with get $image "registry" }}
{{- $_ := set $v.image "repository" (printf "%s/%s" (trimSuffix "/" .) (base $v.image.repository)) }}
{{- end }}
{{- if and (get $image "tag") (not (get $v.image "tag")) }}
{{- $_ := set $v.image "tag" (get $image "tag") }}
{{- end }}
{{- end }}
{{- if and (get $g "imagePullSecrets") (not (get $v "imagePullSecrets")) }}
{{- $_ := set $v "imagePullSecrets" (get $g "imagePullSecrets") }}
{{- end }}
{{- range $section := list "tls" "metrics" "propeller" }}
{{- $shared := get $g $section }}
{{- if and (kindIs "map" $shared) (kindIs "map" (get $v $section)) }}
{{- include "agent-common.overlay" (dict "dst" (get $v $section) "src" $shared) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Sets every key of .src in .dst, descending into maps both have. */}}
{{- define "agent-common.overlay" -}}
{{- $dst := .dst }}
{{- range $key, $value := .src }}
{{- if and (kindIs "map" $value) (kindIs "map" (get $dst $key)) }}
{{- include "agent-common.overlay" (dict "dst" (get $dst $key) "src" $value) }}
{{- else }}
{{- $_ := set $dst $key $value }}
{{- end }}
{{- end }}
{{- end }}
