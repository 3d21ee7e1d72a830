{{/* Chart name, overridable. Kubernetes names are at most 63 characters (DNS label). */}}
{{- define "chipfit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name prefix of every object: the release name, suffixed with the chart name unless it has it. */}}
{{- define "chipfit.fullname" -}}
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

{{/* Labels on every object (Kubernetes recommended labels). */}}
{{- define "chipfit.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "chipfit.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chipfit
{{- end }}

{{/* Labels selecting the operator pods; immutable once a Deployment exists, so keep them minimal. */}}
{{- define "chipfit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chipfit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels selecting the activator pods (the scale-from-zero front); distinct from the operator's. */}}
{{- define "chipfit.activatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "chipfit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: activator
{{- end }}

{{/* Labels on the activator's objects. */}}
{{- define "chipfit.activatorLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "chipfit.activatorSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chipfit
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "chipfit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "chipfit.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image reference: a digest pins it, else the tag, else the chart's appVersion. */}}
{{- define "chipfit.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Contradictory values fail the render with one line naming the keys, before anything reaches the cluster.
values.schema.json checks each key alone; these are the rules that span keys.
*/}}
{{- define "chipfit.validateValues" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicaCount: %d replicas need leaderElection.enabled=true, or every replica would act on the same objects" (int .Values.replicaCount)) }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "serviceMonitor.enabled: needs metrics.enabled=true, there is no metrics endpoint to scrape" }}
{{- end }}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.health.port)) }}
{{- fail (printf "metrics.port: %d is also health.port; the two endpoints need different ports" (int .Values.metrics.port)) }}
{{- end }}
{{- with .Values.autoscaling.activator }}
{{- if and .enabled (eq (int .port) (int .metricsPort)) }}
{{- fail (printf "autoscaling.activator.metricsPort: %d is also autoscaling.activator.port; the two endpoints need different ports" (int .port)) }}
{{- end }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (lt (int .Values.replicaCount) 2) }}
{{- fail "podDisruptionBudget.enabled: needs replicaCount >= 2, or the budget blocks every node drain" }}
{{- end }}
{{- end }}
