{{/*
The agent Deployment. Ports are passed on the command line so the container ports, the
probes and the Service can never disagree with the agent's own configuration.
*/}}
{{/*
The probe: gRPC health on the service port, which is what the agent serves there; with
TLS a TCP check, because the kubelet's gRPC probe speaks only plaintext.
*/}}
{{- define "agent-common.probe" -}}
{{- if .Values.tls.enabled }}
tcpSocket:
  port: grpc
{{- else }}
grpc:
  port: {{ .Values.service.port }}
{{- end }}
{{- end }}

{{- define "agent-common.deployment" -}}
{{- $secretName := include "agent-common.secretName" . -}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "agent-common.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "agent-common.labels" . | nindent 4 }}
spec:
  {{- if not .Values.autoscaling.enabled }}
  replicas: {{ .Values.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    type: RollingUpdate
    rollingUpdate:
      # A new pod is ready in milliseconds; never drop below the desired count.
      maxUnavailable: 0
      maxSurge: 1
  selector:
    matchLabels:
      {{- include "agent-common.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "agent-common.selectorLabels" . | nindent 8 }}
        {{- with .Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        # Roll the pods when their configuration or chart-made secrets change.
        checksum/config: {{ include "agent-common.configmap" . | sha256sum }}
        {{- if and .Values.secrets.data (not .Values.secrets.existingSecret) }}
        checksum/secret: {{ include "agent-common.secret" . | sha256sum }}
        {{- end }}
        {{- if and .Values.metrics.enabled .Values.metrics.scrapeAnnotations }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ .Values.metrics.port | quote }}
        prometheus.io/path: /metrics
        {{- end }}
        {{- with .Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "agent-common.serviceAccountName" . }}
      automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
      # Kubernetes' service-link variables (e.g. AGENT_SNOWFLAKE_PORT for a Service named
      # agent-snowflake) would read as AGENT_* settings, which the agent refuses when unknown.
      enableServiceLinks: false
      {{- with .Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml .Values.podSecurityContext | nindent 8 }}
      # The agent drains in-flight calls for up to its grace period (25 s by default).
      terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
      containers:
        - name: agent
          image: {{ include "agent-common.image" . | quote }}
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          args:
            - --port={{ .Values.service.port }}
            - --metrics-port={{ if .Values.metrics.enabled }}{{ .Values.metrics.port }}{{ else }}0{{ end }}
            {{- if .Values.tls.enabled }}
            - --tls-cert=/etc/flyte-agent/tls/tls.crt
            - --tls-key=/etc/flyte-agent/tls/tls.key
            {{- if .Values.tls.mutual }}
            - --tls-client-ca=/etc/flyte-agent/tls/ca.crt
            {{- end }}
            {{- end }}
            {{- with .Values.extraArgs }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          env:
            - name: AGENT_CONFIG
              value: /etc/flyte-agent/config.yaml
            - name: FLYTE_SECRETS_DEFAULT_DIR
              value: {{ .Values.secrets.mountPath | quote }}
            {{- if .Values.serviceAccountToken.enabled }}
            - name: {{ .Values.serviceAccountToken.envName }}
              value: {{ printf "%s/token" .Values.serviceAccountToken.mountPath | quote }}
            {{- end }}
            {{- with .Values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- with .Values.envFrom }}
          envFrom:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          ports:
            - name: grpc
              containerPort: {{ .Values.service.port }}
              protocol: TCP
            {{- if .Values.metrics.enabled }}
            - name: metrics
              containerPort: {{ .Values.metrics.port }}
              protocol: TCP
            {{- end }}
          {{- with .Values.readinessProbe }}
          readinessProbe:
            {{- include "agent-common.probe" $ | trim | nindent 12 }}
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with .Values.livenessProbe }}
          livenessProbe:
            {{- include "agent-common.probe" $ | trim | nindent 12 }}
            {{- toYaml . | nindent 12 }}
          {{- end }}
          resources:
            {{- toYaml .Values.resources | nindent 12 }}
          securityContext:
            {{- toYaml .Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: config
              mountPath: /etc/flyte-agent
              readOnly: true
            {{- if $secretName }}
            - name: secrets
              mountPath: {{ .Values.secrets.mountPath }}
              readOnly: true
            {{- end }}
            {{- if .Values.serviceAccountToken.enabled }}
            - name: service-account-token
              mountPath: {{ .Values.serviceAccountToken.mountPath }}
              readOnly: true
            {{- end }}
            {{- if .Values.tls.enabled }}
            - name: tls
              mountPath: /etc/flyte-agent/tls
              readOnly: true
            {{- end }}
            {{- with .Values.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: config
          configMap:
            name: {{ include "agent-common.fullname" . }}
        {{- if $secretName }}
        - name: secrets
          secret:
            secretName: {{ $secretName }}
            defaultMode: 0440
        {{- end }}
        {{- if .Values.serviceAccountToken.enabled }}
        - name: service-account-token
          projected:
            sources:
              - serviceAccountToken:
                  path: token
                  audience: {{ .Values.serviceAccountToken.audience | quote }}
                  expirationSeconds: {{ .Values.serviceAccountToken.expirationSeconds }}
        {{- end }}
        {{- if .Values.tls.enabled }}
        - name: tls
          secret:
            secretName: {{ required "tls.secretName: name the kubernetes.io/tls Secret to serve" .Values.tls.secretName }}
            defaultMode: 0440
        {{- end }}
        {{- with .Values.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- if .Values.topologySpread.enabled }}
      topologySpreadConstraints:
        {{- range .Values.topologySpread.topologyKeys }}
        - maxSkew: {{ $.Values.topologySpread.maxSkew }}
          topologyKey: {{ . }}
          whenUnsatisfiable: {{ $.Values.topologySpread.whenUnsatisfiable }}
          labelSelector:
            matchLabels:
              {{- include "agent-common.selectorLabels" $ | nindent 14 }}
        {{- end }}
      {{- end }}
      {{- with .Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
