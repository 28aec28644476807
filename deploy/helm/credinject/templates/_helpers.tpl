{{/* The name of every object: the release name, with "credinject" unless it has it. */}}
{{- define "credinject.fullname" -}}
{{- if contains "credinject" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-credinject" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "credinject.selectorLabels" -}}
app.kubernetes.io/name: credinject
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "credinject.labels" -}}
{{ include "credinject.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* config.yaml: .Values.config with listen.tls, events and prefetch.namespaces filled in from tls, nats and prefetch. */}}
{{- define "credinject.config" -}}
{{- $c := deepCopy .Values.config -}}
{{- $listen := get $c "listen" | default dict -}}
{{- if .Values.tls.enabled -}}
{{- $tls := dict "certFile" "/etc/credinject-tls/tls.crt" "keyFile" "/etc/credinject-tls/tls.key" "clientCAFile" "/etc/credinject-tls/ca.crt" -}}
{{- with .Values.tls.clientNames }}{{ $_ := set $tls "clientNames" . }}{{ end -}}
{{- $_ := set $listen "tls" $tls -}}
{{- end -}}
{{- $_ := set $c "listen" $listen -}}
{{- $events := get $c "events" | default dict -}}
{{- if .Values.nats.url -}}
{{- $_ := set $events "natsURL" .Values.nats.url -}}
{{- $_ := set $events "credsFile" (printf "/etc/credinject-nats/%s" .Values.nats.credsKey) -}}
{{- end -}}
{{- $_ := set $c "events" $events -}}
{{- $prefetch := get $c "prefetch" | default dict -}}
{{- $_ := set $prefetch "namespaces" (.Values.prefetch.namespaces | default list) -}}
{{- $_ := set $c "prefetch" $prefetch -}}
{{- toYaml $c -}}
{{- end -}}
