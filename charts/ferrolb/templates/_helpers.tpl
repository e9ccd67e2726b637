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

{{/* The controller's leader-election Lease: controller.leaderElection.leaseName, else the
controller's own name, so two releases in one namespace never share one. */}}
{{- define "ferrolb.leaseName" -}}
{{- default (include "ferrolb.componentName" (dict "ctx" . "component" "controller")) .Values.controller.leaderElection.leaseName }}
{{- end }}

{{- define "ferrolb.membershipSecretName" -}}
{{- default (include "ferrolb.componentName" (dict "ctx" . "component" "membership")) .Values.speaker.membership.existingSecret }}
{{- end }}

{{/* The speakers' membership UDP port: speaker.membership.port, or MetalLB's spelling
speaker.memberlist.mlBindPort when set (templates/compatibility.yaml refuses the two disagreeing). */}}
{{- define "ferrolb.membershipPort" -}}
{{- $ml := .Values.speaker.memberlist.mlBindPort }}
{{- if kindIs "invalid" $ml }}{{ .Values.speaker.membership.port }}{{ else }}{{ $ml }}{{ end }}
{{- end }}

{{/* A component's log filter: MetalLB's <component>.logLevel when set (all -> trace, none -> off),
else logging.level. Call with (dict "ctx" $ "component" "controller"). */}}
{{- define "ferrolb.logLevel" -}}
{{- $level := index .ctx.Values .component "logLevel" }}
{{- if not $level }}{{ .ctx.Values.logging.level }}
{{- else if eq $level "all" }}trace
{{- else if eq $level "none" }}off
{{- else }}{{ $level }}
{{- end }}
{{- end }}

{{/* The speaker's tolerations; with MetalLB's speaker.tolerateMaster false, those of
control-plane and master nodes are taken out. */}}
{{- define "ferrolb.speakerTolerations" -}}
{{- $kept := list }}
{{- range .Values.speaker.tolerations }}
{{- if or $.Values.speaker.tolerateMaster (not (has (toString .key) (list "node-role.kubernetes.io/control-plane" "node-role.kubernetes.io/master"))) }}
{{- $kept = append $kept . }}
{{- end }}
{{- end }}
{{- with $kept }}{{ toYaml . }}{{ end }}
{{- end }}

{{/* Environment both components share: call with (dict "ctx" $ "component" "controller"). */}}
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
  value: {{ .ctx.Values.logging.format | quote }}
- name: FERROLB_LOG_LEVEL
  value: {{ include "ferrolb.logLevel" . | quote }}
{{- with .ctx.Values.loadBalancerClass }}
- name: FERROLB_LB_CLASS
  value: {{ . | quote }}
{{- end }}
{{- end }}
