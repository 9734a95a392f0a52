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

{{/* Pull secrets: image.pullSecrets and the official chart's imagePullSecrets (names or {name}). */}}
{{- define "podrunner.pullSecrets" -}}
{{- $names := list -}}
{{- range concat (.Values.image.pullSecrets | default list) (.Values.imagePullSecrets | default list) -}}
{{- if kindIs "map" . }}{{ $names = append $names .name }}{{ else }}{{ $names = append $names . }}{{ end -}}
{{- end -}}
{{- range uniq $names }}
- name: {{ . }}
{{- end -}}
{{- end -}}

{{/* A probe: podrunner's HTTP check with the user's timings (livenessProbe/readinessProbe). */}}
{{- define "podrunner.probe" -}}
{{- $timings := pick .user "initialDelaySeconds" "periodSeconds" "timeoutSeconds" "failureThreshold" "successThreshold" -}}
{{- $probe := merge $timings (dict "httpGet" (dict "path" .path "port" .port)) .defaults -}}
{{- toYaml $probe -}}
{{- end -}}

{{/*
Values of the official GitLab Runner chart that podrunner's chart reads but does not honour,
each with what to do instead; and values neither chart knows. NOTES.txt prints both, and
`podrunner config check --values` says the same.
*/}}
{{- define "podrunner.valueNotes" -}}
{{- $ignored := dict
  "unregisterRunners" "the preStop hook drains running jobs (podrunner drain) and does not unregister; remove stale runner managers in GitLab, or run podrunner unregister"
  "sessionServer" "interactive web terminals need exec streams, which podrunner does not use"
  "hpa" "the chart renders no HorizontalPodAutoscaler; set replicas (each manager takes up to concurrent jobs)"
  "preEntrypointScript" "the image has no shell; use extraEnv, envVars or volumes"
  "useTini" "podrunner is its own init process"
  "probeTimeoutSeconds" "give livenessProbe.timeoutSeconds and readinessProbe.timeoutSeconds"
  "sentryDsn" "podrunner sends nothing to Sentry; read its logs"
  "connectionMaxAge" "podrunner recycles idle GitLab connections after 90 s"
  "deploymentLifecycle" "the preStop hook stays podrunner drain, which finishes running jobs"
  "secrets" "mount extra Secrets with volumes and volumeMounts"
  "configMaps" "mount extra ConfigMaps with volumes and volumeMounts"
  "namespace" "install the release with --namespace; job pods go to runners.jobNamespace or the namespace in runners.config"
-}}
{{- $ignoredRunners := dict
  "configPath" "the chart renders runners.config into the manager's values; there is no config file to point at"
  "tags" "glrt- runner tokens carry their tags in GitLab: set them in the runner's settings"
  "locked" "glrt- runner tokens: set it in the runner's settings in GitLab"
  "runUntagged" "glrt- runner tokens: set it in the runner's settings in GitLab"
  "protected" "glrt- runner tokens: set it in the runner's settings in GitLab"
  "maximumTimeout" "glrt- runner tokens: set it in the runner's settings in GitLab"
-}}
{{- $ignoredRbac := dict
  "rules" "podrunner's Role grants exactly the calls its executor makes"
  "podSecurityPolicy" "PodSecurityPolicy was removed in Kubernetes 1.25"
  "serviceAccountName" "use serviceAccount.name"
  "generatedServiceAccountName" "use serviceAccount.name"
  "imagePullSecrets" "use serviceAccount.imagePullSecrets"
-}}
{{- $known := list "gitlabUrl" "runnerToken" "runnerRegistrationToken" "image" "imagePullPolicy" "imagePullSecrets" "replicas" "revisionHistoryLimit" "strategy" "zoneAntiAffinity" "concurrent" "checkInterval" "logLevel" "logFormat" "shutdown_timeout" "terminationGracePeriodSeconds" "runners" "rbac" "serviceAccount" "metrics" "service" "pinToEC2" "podLabels" "podAnnotations" "deploymentLabels" "deploymentAnnotations" "hostAliases" "hostname" "runtimeClassName" "schedulerName" "automountServiceAccountToken" "resources" "nodeSelector" "tolerations" "affinity" "topologySpreadConstraints" "priorityClassName" "securityContext" "podSecurityContext" "extraEnv" "extraEnvFrom" "extraEnvFromRefs" "envVars" "livenessProbe" "readinessProbe" "extraContainers" "extraObjects" "volumes" "volumeMounts" "certsSecretName" "certsSecretKey" "global" -}}
{{- range $key, $value := .Values -}}
{{- if hasKey $ignored $key }}
IGNORED: {{ $key }}: {{ get $ignored $key }}
{{- else if not (has $key $known) }}
UNKNOWN: {{ $key }}: neither podrunner's chart nor the official GitLab Runner chart has this value (misspelt?)
{{- end -}}
{{- end -}}
{{- range $probe := list "livenessProbe" "readinessProbe" -}}
{{- range $handler := list "exec" "httpGet" "tcpSocket" "grpc" -}}
{{- if hasKey (get $.Values $probe | default dict) $handler }}
IGNORED: {{ $probe }}.{{ $handler }}: podrunner's probes are its HTTP checks /healthz and /readyz; only the timings are taken
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $key, $value := .Values.runners -}}
{{- if and (hasKey $ignoredRunners $key) $value }}
IGNORED: runners.{{ $key }}: {{ get $ignoredRunners $key }}
{{- end -}}
{{- end -}}
{{- range $key, $value := .Values.rbac -}}
{{- if and (hasKey $ignoredRbac $key) $value }}
IGNORED: rbac.{{ $key }}: {{ get $ignoredRbac $key }}
{{- end -}}
{{- end -}}
{{- end -}}
