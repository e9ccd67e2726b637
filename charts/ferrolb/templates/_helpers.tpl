{{/* Names, labels and small values shared by the templates. */}}

{{- define "ferrolb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource-name prefix: the release name, plus the chart name when the release name lacks it. */}}
{{- define "ferrolb.fullname" -}}
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

{{- define "ferrolb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ferrolb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferrolb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ferrolb.labels" -}}
helm.sh/chart: {{ include "ferrolb.chart" . }}
{{ include "ferrolb.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ferrolb
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Per-component names and labels: call with (dict "ctx" $ "component" "controller"). */}}
{{- define "ferrolb.componentName" -}}
{{- printf "%s-%s" (include "ferrolb.fullname" .ctx | trunc 52 | trimSuffix "-") .component }}
{{- end }}

{{- define "ferrolb.componentLabels" -}}
{{ include "ferrolb.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "ferrolb.componentSelectorLabels" -}}
{{ include "ferrolb.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "ferrolb.serviceAccountName" -}}
{{- $sa := index .ctx.Values .component "serviceAccount" }}
{{- if $sa.create }}
{{- default (include "ferrolb.componentName" .) $sa.name }}
{{- else }}
{{- default "default" $sa.name }}
{{- end }}
{{- end }}

{{- define "ferrolb.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* host:port, with brackets for an IPv6 host: call with (list host port). */}}
{{- define "ferrolb.hostPort" -}}
{{- $host := toString (index . 0) }}
{{- if contains ":" $host }}
{{- printf "[%s]:%v" $host (index . 1) }}
{{- else }}
{{- printf "%s:%v" $host (index . 1) }}
{{- end }}
{{- end }}

{{- define "ferrolb.membershipSecretName" -}}
{{- default (include "ferrolb.componentName" (dict "ctx" . "component" "membership")) .Values.speaker.membership.existingSecret }}
{{- end }}

{{/* Environment both components share. */}}
{{- define "ferrolb.commonEnv" -}}
- name: FERROLB_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: FERROLB_LOG_FORMAT
  value: {{ .Values.logging.format | quote }}
- name: FERROLB_LOG_LEVEL
  value: {{ .Values.logging.level | quote }}
{{- with .Values.loadBalancerClass }}
- name: FERROLB_LB_CLASS
  value: {{ . | quote }}
{{- end }}
{{- end }}
