{{/*
NOTES.txt of every agent chart: the FlytePropeller configuration that routes the agent's
task types to this release, for both Propeller plugins.
*/}}
{{- define "agent-common.notes" -}}
{{- $name := include "agent-common.fullname" . -}}
{{- $endpoint := printf "k8s://%s.%s:%v" $name .Release.Namespace .Values.service.port -}}
{{- $async := compact (splitList "," (include "agent-common.asyncTaskTypes" .)) -}}
{{- $sync := compact (splitList "," (include "agent-common.syncTaskTypes" .)) -}}
{{- $p := .Values.propeller -}}
{{- $insecure := and $p.insecure (not .Values.tls.enabled) -}}
{{ $name }} serves Flyte task types at {{ $endpoint }}
{{- if $async }}
  async: {{ join ", " $async }}
{{- end }}
{{- if $sync }}
  sync:  {{ join ", " $sync }}
{{- end }}

Route them from FlytePropeller: merge one of the blocks below into its configuration
and keep the plugin in tasks.task-plugins.enabled-plugins (next to your other plugins).
Propeller asks every deployment it knows for its task types (ListAgents, every 10 s);
{{- if $sync }}
sync task types must be found that way, because a static entry makes Propeller treat
a task type as async, so only the async ones are listed statically.
{{- else }}
the static entries below route the task types even before the first answer.
{{- end }}

A Flyte 2 backend calls the same port over flyteidl2.connector: its connector-service
plugin takes the connectors entry of the first block (ListConnectors for discovery).
{{- if .Values.tls.enabled }}

TLS is on: Propeller (insecure: false) checks the agent's certificate against its system
CA pool for the name {{ $name }}.{{ .Release.Namespace }}.
{{- if .Values.tls.mutual }} Propeller 1.x sends no client certificate, so mutual
TLS needs a proxy or mesh in front of Propeller that presents one.
{{- end }}
{{- end }}

# Flyte 1.16 and later, plugin connector-service:
tasks:
  task-plugins:
    enabled-plugins: [container, sidecar, k8s-array, connector-service]
plugins:
  connector-service:
    connectors:
      {{ $name }}:
        endpoint: "{{ $endpoint }}"
        insecure: {{ $insecure }}
        timeouts:
          CreateTask: {{ $p.timeouts.CreateTask }}
          GetTask: {{ $p.timeouts.GetTask }}
          DeleteTask: {{ $p.timeouts.DeleteTask }}
          {{- if $sync }}
          ExecuteTaskSync: {{ $p.timeouts.ExecuteTaskSync }}
          {{- end }}
          ListConnectors: {{ $p.timeouts.ListAgents }}
        defaultTimeout: {{ $p.defaultTimeout }}
    {{- if $async }}
    connectorForTaskTypes:
      {{- range $async }}
      {{ . }}: {{ $name }}
      {{- end }}
    {{- end }}

# Flyte 1.x, plugin agent-service (the only one before 1.16):
tasks:
  task-plugins:
    enabled-plugins: [container, sidecar, k8s-array, agent-service]
plugins:
  agent-service:
    agents:
      {{ $name }}:
        endpoint: "{{ $endpoint }}"
        insecure: {{ $insecure }}
        timeouts:
          CreateTask: {{ $p.timeouts.CreateTask }}
          GetTask: {{ $p.timeouts.GetTask }}
          DeleteTask: {{ $p.timeouts.DeleteTask }}
          {{- if $sync }}
          ExecuteTaskSync: {{ $p.timeouts.ExecuteTaskSync }}
          {{- end }}
          ListAgents: {{ $p.timeouts.ListAgents }}
        defaultTimeout: {{ $p.defaultTimeout }}
    {{- if $async }}
    agentForTaskTypes:
      {{- range $async }}
      {{ . }}: {{ $name }}
      {{- end }}
    {{- end }}
{{- end }}
