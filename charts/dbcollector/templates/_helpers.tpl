{{/* The name of every object of the release: the release name, cut to 63 characters. */}}
{{- define "dbcollector.fullname" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "dbcollector.labels" -}}
app.kubernetes.io/name: dbcollector
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The labels that select the operator's pods: stable across upgrades. */}}
{{- define "dbcollector.selectorLabels" -}}
app.kubernetes.io/name: dbcollector
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}
