{{/*
NOTES.txt of every agent chart, and the pieces the flyte-agents umbrella chart prints its
merged configuration from: the Flyte configuration that routes the agents' task types to
their Services, for Flyte 1.16 and later (plugin connector-service), Flyte 1.15 and earlier
(agent-service) and Flyte 2, each as Propeller's own configuration and as values of the
flyte-core and flyte-binary charts. tests/charts/propeller_config.yaml holds the upstream
keys every block is checked against.
*/}}
{{- define "agent-common.notes" -}}
{{- $ctx := dict }}
{{- include "agent-common.scope" (dict "ctx" . "out" $ctx) }}
{{- $agent := include "agent-common.propellerAgent" $ctx | fromYaml }}
{{- $agent.name }} serves Flyte task types at {{ $agent.endpoint }}
{{- if $agent.async }}
  async: {{ join ", " $agent.async }}
{{- end }}
{{- if $agent.sync }}
  sync:  {{ join ", " $agent.sync }}
{{- end }}

{{ include "agent-common.propellerNotes" (dict "agents" (list $agent)) }}
{{- end }}

{{/*
One agent as the Propeller configuration sees it (YAML, for fromYaml), from a context whose
globals are applied: its Service, task types (the chart's annotations) and timeouts.
*/}}
{{- define "agent-common.propellerAgent" -}}
{{- $name := include "agent-common.fullname" . }}
{{- $p := .Values.propeller }}
{{- dict
  "name" $name
  "namespace" .Release.Namespace
  "endpoint" (printf "k8s://%s.%s:%v" $name .Release.Namespace .Values.service.port)
  "insecure" (and $p.insecure (not .Values.tls.enabled))
  "tls" .Values.tls.enabled
  "mutual" (and .Values.tls.enabled .Values.tls.mutual)
  "async" (compact (splitList "," (include "agent-common.asyncTaskTypes" .)))
  "sync" (compact (splitList "," (include "agent-common.syncTaskTypes" .)))
  "timeouts" $p.timeouts
  "defaultTimeout" $p.defaultTimeout
  | toYaml }}
{{- end }}

{{/*
flyte-core's (and flyte-binary's) default tasks.task-plugins.enabled-plugins of the newest
release that enables the plugin: v1.16.8 for connector-service, v1.15.3 for agent-service.
*/}}
{{- define "agent-common.flyteDefaultPlugins" -}}
{{- if eq . "agent-service" }}container,sidecar,k8s-array,agent-service,echo
{{- else }}container,sidecar,k8s-array,connector-service,echo
{{- end }}
{{- end }}

{{/*
The explanation and the eight blocks, for .agents (a list of "agent-common.propellerAgent").
*/}}
{{- define "agent-common.propellerNotes" -}}
{{- $agents := .agents }}
{{- $sync := list }}{{ $tls := list }}{{ $mutual := list }}
{{- range $agents }}
{{- $sync = concat $sync .sync }}
{{- if .tls }}{{ $tls = append $tls (printf "%s.%s" .name .namespace) }}{{ end }}
{{- if .mutual }}{{ $mutual = append $mutual .name }}{{ end }}
{{- end -}}
Route them from Flyte with ONE of the blocks below, the one for your Flyte version and for
where its configuration lives: Propeller's configuration file, or the values of the
flyte-core or flyte-binary chart (helm upgrade -f). Each block:
- maps every task type above to the plugin in tasks.task-plugins.default-for-task-types.
  Propeller 1.x refuses to start when two enabled plugins claim one task type ("Multiple
  plugins registered to handle task type: spark", e.g. Spark on Kubernetes beside the
  Databricks agent), and Flyte 2 hands the plugin only the task types named there or in its
  supportedTaskTypes. Maps merge, so these entries join yours.
- lists enabled-plugins whole: Helm values and Propeller's configuration files replace a
  list rather than merge it. The list shown is flyte-core's and flyte-binary's default for
  that Flyte version with the plugin marked; add every plugin you enabled yourself (spark,
  dask, ...), or applying it switches them off.
- names each Service as a deployment of the plugin and routes its async task types to it
  statically; Propeller also asks every deployment for its task types every 10 s.
{{- if $sync }} Sync task
  types ({{ join ", " $sync }}) are left to that in Flyte 1: a static entry is called asynchronously.
{{- end }}
- goes, for flyte-core, into configmap.enabled_plugins (a configuration file of its own),
  leaving flyte-core's flyteconnector subchart (the Python connector) off; for flyte-binary,
  into enabled_plugins and configuration.inline.

A Flyte 2 backend calls the same port over flyteidl2.connector (ListConnectors for
discovery); its executor has no enabled-plugins list (it loads every plugin) and no sync
calls, so its blocks route every task type statically{{ if $sync }} and give a sync task type's
CreateTask the ExecuteTaskSync timeout (the agent answers it within CreateTask){{ end }}.
{{- if $tls }}

TLS is on: Flyte (insecure: false) checks each agent's certificate against its system CA
pool for the Service's name ({{ join ", " $tls }}).
{{- if $mutual }}
Propeller 1.x sends no client certificate, so mutual TLS ({{ join ", " $mutual }}) needs a
proxy or mesh in front of Propeller that presents one.
{{- end }}
{{- end }}

# Flyte 1.16 and later, connector-service: Propeller configuration
{{ include "agent-common.propellerDocument" (dict "agents" $agents "flavor" "connector") }}

# Flyte 1.16 and later, connector-service: flyte-core values
configmap:
  enabled_plugins:
    {{- include "agent-common.propellerDocument" (dict "agents" $agents "flavor" "connector") | nindent 4 }}

# Flyte 1.16 and later, connector-service: flyte-binary values
enabled_plugins:
  tasks:
    {{- include "agent-common.propellerTaskPlugins" (dict "agents" $agents "flavor" "connector") | nindent 4 }}
configuration:
  inline:
    plugins:
      {{- include "agent-common.propellerPlugin" (dict "agents" $agents "flavor" "connector") | nindent 6 }}

# Flyte 1.15 and earlier, agent-service: Propeller configuration
{{ include "agent-common.propellerDocument" (dict "agents" $agents "flavor" "agent") }}

# Flyte 1.15 and earlier, agent-service: flyte-core values
configmap:
  enabled_plugins:
    {{- include "agent-common.propellerDocument" (dict "agents" $agents "flavor" "agent") | nindent 4 }}

# Flyte 1.15 and earlier, agent-service: flyte-binary values
enabled_plugins:
  tasks:
    {{- include "agent-common.propellerTaskPlugins" (dict "agents" $agents "flavor" "agent") | nindent 4 }}
configuration:
  inline:
    plugins:
      {{- include "agent-common.propellerPlugin" (dict "agents" $agents "flavor" "agent") | nindent 6 }}

# Flyte 2, connector-service: executor configuration
{{ include "agent-common.propellerDocument" (dict "agents" $agents "flavor" "flyte2") }}

# Flyte 2, connector-service: flyte-binary values
enabled_plugins:
  tasks:
    {{- include "agent-common.propellerTaskPlugins" (dict "agents" $agents "flavor" "flyte2") | nindent 4 }}
configuration:
  inline:
    plugins:
      {{- include "agent-common.propellerPlugin" (dict "agents" $agents "flavor" "flyte2") | nindent 6 }}
{{- end }}

{{/* A whole configuration document: tasks: and plugins:. */}}
{{- define "agent-common.propellerDocument" -}}
tasks:
  {{- include "agent-common.propellerTaskPlugins" . | nindent 2 }}
plugins:
  {{- include "agent-common.propellerPlugin" . | nindent 2 }}
{{- end }}

{{/* tasks.task-plugins: the plugin list (Flyte 1) and the task types' plugin. */}}
{{- define "agent-common.propellerTaskPlugins" -}}
{{- $plugin := ternary "agent-service" "connector-service" (eq .flavor "agent") -}}
task-plugins:
  {{- if ne .flavor "flyte2" }}
  {{- $defaults := splitList "," (include "agent-common.flyteDefaultPlugins" $plugin) }}
  enabled-plugins:
    {{- range $defaults }}
    - {{ . }}{{ if eq . $plugin }}  # the agents' plugin{{ end }}
    {{- end }}
    {{- if not (has $plugin $defaults) }}
    - {{ $plugin }}  # the agents' plugin, added
    {{- end }}
  {{- end }}
  default-for-task-types:
    {{- range .agents }}
    {{- range concat .async .sync }}
    {{ . }}: {{ $plugin }}
    {{- end }}
    {{- end }}
{{- end }}

{{/*
plugins.<plugin>: a named deployment per agent and the static routes. Flyte 1 routes only
async task types statically (a static entry is called asynchronously); Flyte 2 has no sync
calls, so it routes and registers every task type, and a sync task is answered in CreateTask.
*/}}
{{- define "agent-common.propellerPlugin" -}}
{{- $flavor := .flavor }}
{{- $agentService := eq $flavor "agent" }}
{{- $flyte2 := eq $flavor "flyte2" }}
{{- $list := ternary "ListAgents" "ListConnectors" $agentService }}
{{- $all := list }}
{{- range .agents }}{{ $all = concat $all .async .sync }}{{ end -}}
{{ ternary "agent-service" "connector-service" $agentService }}:
  {{- if $flyte2 }}
  supportedTaskTypes: [{{ join ", " $all }}]
  {{- end }}
  {{ ternary "agents" "connectors" $agentService }}:
    {{- range .agents }}
    {{- $t := .timeouts }}
    {{ .name }}:
      endpoint: {{ .endpoint | quote }}
      insecure: {{ .insecure }}
      timeouts:
        CreateTask: {{ if and $flyte2 .sync }}{{ $t.ExecuteTaskSync }}{{ else }}{{ $t.CreateTask }}{{ end }}
        GetTask: {{ $t.GetTask }}
        DeleteTask: {{ $t.DeleteTask }}
        {{- if and .sync (not $flyte2) }}
        ExecuteTaskSync: {{ $t.ExecuteTaskSync }}
        {{- end }}
        {{ $list }}: {{ $t.ListAgents }}
      defaultTimeout: {{ .defaultTimeout }}
    {{- end }}
  {{- $routed := false }}
  {{- range .agents }}{{ if or .async (and $flyte2 .sync) }}{{ $routed = true }}{{ end }}{{ end }}
  {{- if $routed }}
  {{ ternary "agentForTaskTypes" "connectorForTaskTypes" $agentService }}:
    {{- range .agents }}
    {{- $name := .name }}
    {{- range (ternary (concat .async .sync) .async $flyte2) }}
    {{ . }}: {{ $name }}
    {{- end }}
    {{- end }}
  {{- end }}
{{- end }}
