{{/* Chart name. */}}
{{- define "komptroller.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the prefix of every resource. */}}
{{- define "komptroller.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "komptroller.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "komptroller.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "komptroller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "komptroller.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "komptroller.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "komptroller.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "komptroller.webhookService" -}}
{{- printf "%s-webhook" (include "komptroller.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "komptroller.metricsService" -}}
{{- printf "%s-metrics" (include "komptroller.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The cert-manager Certificate and the Secret it writes. */}}
{{- define "komptroller.certificate" -}}
{{- printf "%s-webhook" (include "komptroller.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "komptroller.certificateSecret" -}}
{{- printf "%s-webhook-cert" (include "komptroller.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Whether the operator writes the webhook configurations itself (self-managed mode). */}}
{{- define "komptroller.operatorManagesWebhooks" -}}
{{- if and .Values.webhook.enabled (eq .Values.webhook.certMode "self-managed") }}true{{ end }}
{{- end }}

{{/* Whether the chart renders the webhook configurations (cert-manager and provided modes). */}}
{{- define "komptroller.chartRendersWebhooks" -}}
{{- if and .Values.webhook.enabled (ne .Values.webhook.certMode "self-managed") }}true{{ end }}
{{- end }}

{{- define "komptroller.tlsSecret" -}}
{{- if eq .Values.webhook.certMode "cert-manager" }}{{ include "komptroller.certificateSecret" . }}{{ else }}{{ .Values.webhook.provided.secretName }}{{ end }}
{{- end }}

{{/* Webhook configuration pieces (cert-manager and provided modes). */}}
{{- define "komptroller.webhookClient" -}}
clientConfig:
  service:
    namespace: {{ .ctx.Release.Namespace }}
    name: {{ include "komptroller.webhookService" .ctx }}
    port: {{ .ctx.Values.service.webhookPort }}
    path: {{ .path }}
  {{- if eq .ctx.Values.webhook.certMode "provided" }}
  caBundle: {{ .ctx.Values.webhook.provided.caBundle }}
  {{- end }}
{{- end }}
{{- define "komptroller.webhookCommon" -}}
matchPolicy: Equivalent
sideEffects: None
timeoutSeconds: {{ .Values.webhook.timeoutSeconds }}
admissionReviewVersions: ["v1"]
{{- end }}
{{- define "komptroller.webhookMeta" -}}
name: {{ include "komptroller.fullname" . }}
labels:
  {{- include "komptroller.labels" . | nindent 2 }}
{{- if eq .Values.webhook.certMode "cert-manager" }}
annotations:
  cert-manager.io/inject-ca-from: "{{ .Release.Namespace }}/{{ include "komptroller.certificate" . }}"
{{- end }}
{{- end }}
