{{/* Names, labels and the derived settings every template shares. */}}

{{- define "portico.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portico.fullname" -}}
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

{{- define "portico.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portico.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portico.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "portico.labels" -}}
helm.sh/chart: {{ include "portico.chart" . }}
{{ include "portico.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portico
{{- end }}

{{- define "portico.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "portico.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "portico.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The Lease name: one per release so two installs in a namespace never share a leader. */}}
{{- define "portico.electionId" -}}
{{- default (printf "%s-leader" (include "portico.fullname" .)) .Values.controller.electionId }}
{{- end }}

{{/* The namespaces served, as a list; namespaced RBAC needs at least one. */}}
{{- define "portico.watchNamespaces" -}}
{{- $namespaces := .Values.watchNamespaces }}
{{- if and (not $namespaces) (eq .Values.rbac.scope "namespaced") }}
{{- $namespaces = list .Release.Namespace }}
{{- end }}
{{- toJson (uniq $namespaces) }}
{{- end }}

{{/* namespace/name of the Service whose address is published, or "" when none is. */}}
{{- define "portico.publishService" -}}
{{- if .Values.controller.publishService.enabled }}
{{- default (printf "%s/%s" .Release.Namespace (include "portico.fullname" .)) .Values.controller.publishService.pathOverride }}
{{- end }}
{{- end }}

{{/* SIGTERM to exit takes up to shutdownDelay + drainTimeout; the margin covers process exit. */}}
{{- define "portico.terminationGracePeriodSeconds" -}}
{{- $c := .Values.controller }}
{{- $needed := add $c.preStopSleepSeconds $c.shutdownDelay $c.drainTimeout }}
{{- if $c.terminationGracePeriodSeconds }}
{{- if le (int $c.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "controller.terminationGracePeriodSeconds (%d) must be larger than preStopSleepSeconds + shutdownDelay + drainTimeout (%d)" (int $c.terminationGracePeriodSeconds) (int $needed)) }}
{{- end }}
{{- $c.terminationGracePeriodSeconds }}
{{- else }}
{{- add $needed 10 }}
{{- end }}
{{- end }}

{{/* Replicas the workload will run, for the PodDisruptionBudget decision. */}}
{{- define "portico.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}
{{- .Values.autoscaling.minReplicas }}
{{- else }}
{{- .Values.replicaCount }}
{{- end }}
{{- end }}

{{/* Namespaced read and status-write rules (see rbac.yaml), as a YAML list. The informers
only list and watch (no get); tests/integration/test_cluster_chart_rbac.py fails on a rule the
controller does not use. */}}
{{- define "portico.namespacedRules" }}
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["services", "secrets", "configmaps"]
  verbs: ["list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
# The status writer merge-patches /status.
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses/status"]
  verbs: ["patch"]
# Problems become core/v1 Events: create, then patch the count; get when one already exists.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "get", "patch"]
{{- end }}

{{/* A value as an environment variable string. Helm reads numbers as float64, and 1048576 would
print as 1.048576e+06: whole numbers are printed as integers. */}}
{{- define "portico.envValue" -}}
{{- if and (kindIs "float64" .) (eq . (float64 (int64 .))) }}
{{- int64 . | toString | quote }}
{{- else }}
{{- toString . | quote }}
{{- end }}
{{- end }}
