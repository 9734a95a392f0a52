{{- define "podrunner.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "podrunner.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "podrunner.labels" -}}
{{ include "podrunner.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "podrunner.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "podrunner.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{- define "podrunner.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.registry -}}{{ printf "%s/%s:%s" .Values.image.registry .Values.image.image $tag }}{{- else -}}{{ printf "%s:%s" .Values.image.image $tag }}{{- end -}}
{{- end -}}

{{/* runners.config rendered with tpl; with certsSecretName, tls-ca-file is added to the runner. */}}
{{- define "podrunner.runnerConfig" -}}
{{- $config := tpl .Values.runners.config . -}}
{{- if .Values.certsSecretName -}}
{{- $config = replace "[[runners]]" (printf "[[runners]]\n  tls-ca-file = %q" (printf "/etc/podrunner/certs/%s" .Values.certsSecretKey)) $config -}}
{{- end -}}
{{- $config -}}
{{- end -}}

{{/* Where job pods run: the namespace runners.config names, else runners.jobNamespace, else the release's. */}}
{{- define "podrunner.jobNamespace" -}}
{{- $config := include "podrunner.runnerConfig" . -}}
{{- $named := regexFind "namespace\\s*=\\s*\"[^\"]+\"" $config -}}
{{- if $named -}}{{ regexReplaceAll "namespace\\s*=\\s*\"([^\"]+)\"" $named "${1}" }}{{- else -}}{{ default .Release.Namespace .Values.runners.jobNamespace }}{{- end -}}
{{- end -}}

{{- define "podrunner.tokenSecret" -}}
{{- default (include "podrunner.fullname" .) (tpl .Values.runners.secret .) -}}
{{- end -}}
