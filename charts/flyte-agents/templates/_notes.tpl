{{/*
The NOTES: the agents this release runs and one Flyte configuration routing every task type
of every one of them, a named deployment per agent (agent-common's "propellerNotes").
*/}}
{{- define "flyte-agents.notes" -}}
{{- $agents := list }}
{{- range $alias, $sub := .Subcharts }}
{{- if eq $sub.Chart.Type "application" }}
{{- $ctx := dict }}
{{- include "agent-common.scope" (dict "ctx" $sub "out" $ctx) }}
{{- $agents = append $agents (include "agent-common.propellerAgent" $ctx | fromYaml) }}
{{- end }}
{{- end }}
{{- if not $agents -}}
{{ .Release.Name }} installed no agent: switch them on under agents: in the values, e.g.
  helm upgrade {{ .Release.Name }} charts/flyte-agents -n {{ .Release.Namespace }} --reuse-values --set agents.databricks=true
{{- else -}}
{{ .Release.Name }} runs these Flyte agents, each its own Deployment and Service:
{{- range $agents }}
  {{ .name }} at {{ .endpoint }}
  {{- if .async }}
    async: {{ join ", " .async }}
  {{- end }}
  {{- if .sync }}
    sync:  {{ join ", " .sync }}
  {{- end }}
{{- end }}

The configuration below routes all of them, each Service its own named deployment: the
drop-in for the Python flyteconnector deployment's. Turn that one off (flyteconnector.enabled:
false in flyte-core or flyte-binary), or keep it only for task types these agents do not
serve: where both report one task type, which deployment Propeller picks depends on its
version and on map order, and can change at each 10 s discovery.

{{ include "agent-common.propellerNotes" (dict "agents" $agents) }}
{{- end }}
{{- end }}
