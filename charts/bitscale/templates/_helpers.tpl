{{- define "bitscale.name" -}}bitscale-operator{{- end -}}

{{- define "bitscale.fullname" -}}
{{- if contains "bitscale" .Release.Name -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-bitscale-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "bitscale.labels" -}}
app.kubernetes.io/name: {{ include "bitscale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "bitscale.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bitscale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "bitscale.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "bitscale.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "bitscale.engineTag" -}}{{ default .Chart.AppVersion .Values.engine.tag }}{{- end -}}
