{{/* The chart name (or nameOverride), 63 characters at most. */}}
{{- define "edm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's object name: <release>-<name>, or the release name when it holds the name. */}}
{{- define "edm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "edm.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The headless Service: stable pod DNS names <pod>.<headless>.<namespace>.svc. */}}
{{- define "edm.headless" -}}
{{- printf "%s-pods" (include "edm.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "edm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "edm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "edm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "edm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: microservice
{{- with .Values.partOf }}
app.kubernetes.io/part-of: {{ . }}
{{- end }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "edm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "edm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Kafka servers: the service's own, else the umbrella's global.kafka.bootstrapServers. */}}
{{- define "edm.bootstrapServers" -}}
{{- $global := dig "kafka" "bootstrapServers" "" (.Values.global | default dict) -}}
{{- default $global .Values.kafka.bootstrapServers -}}
{{- end -}}

{{- define "edm.scheme" -}}
{{- if .Values.http.tls -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{/* A ConfigMap key for a topology file path (keys cannot hold "/"). */}}
{{- define "edm.fileKey" -}}
{{- . | replace "/" "__" -}}
{{- end -}}

{{/* What the chart refuses, each with what to do. */}}
{{- define "edm.checks" -}}
{{- if not (hasKey .Values.topology.files .Values.topology.file) -}}
{{- fail (printf "topology.file %q is not among topology.files (%s): add it, e.g. --set-file 'topology.files.%s=PATH', or write the values with `edm chart values FILE -o DIR`" .Values.topology.file (keys .Values.topology.files | sortAlpha | join ", ") (.Values.topology.file | replace "." "\\.")) -}}
{{- end -}}
{{- if and (gt (int .Values.tasks) 0) (gt (int .Values.replicas) (int .Values.tasks)) -}}
{{- fail (printf "replicas %d is above the service's task count %d: a pod without a task only idles; set replicas to at most %d (or add partitions to the input streams)" (int .Values.replicas) (int .Values.tasks) (int .Values.tasks)) -}}
{{- end -}}
{{- if and (gt (int .Values.replicas) 1) (eq .Values.brokerKind "local") (not (include "edm.bootstrapServers" .)) -}}
{{- fail (printf "replicas %d on the embedded broker: each pod would process its own copy of the streams; set kafka.bootstrapServers (the pods then run on Kafka, EDM_BROKER) or replicas: 1" (int .Values.replicas)) -}}
{{- end -}}
{{- if and .Values.keda.enabled (eq (int .Values.tasks) 0) -}}
{{- fail "keda.enabled needs the service's task count in `tasks` (the cap of maxReplicas): `edm chart values FILE -o DIR` writes it, or `edm describe FILE` counts it" -}}
{{- end -}}
{{- end -}}
