{{/*
Names. Every object is named pingvas-<component>, not after the release: the gateway's Envoy
config is rendered by Python ahead of time (files/envoy.json, `pingvas gateway render`) and
reaches each backend by its Service's short name, so one release per namespace, one namespace
per environment.
*/}}
{{- define "pingvas.name" -}}
pingvas-{{ . }}
{{- end -}}

{{- define "pingvas.selectorLabels" -}}
app.kubernetes.io/name: pingvas
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "pingvas.labels" -}}
{{ include "pingvas.selectorLabels" . }}
app.kubernetes.io/part-of: pingvas
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
pingvas.studio/environment: {{ .root.Values.environment }}
{{- end -}}

{{/* The image of the services, Envoy and the jobs; the worker's is workerImage. */}}
{{- define "pingvas.image" -}}
{{ .repository }}:{{ .tag }}
{{- end -}}

{{/* Pod-level security: non-root, its own group for mounted volumes, the runtime's seccomp. */}}
{{- define "pingvas.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsUser }}
fsGroup: {{ .Values.securityContext.runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "pingvas.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsUser }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* A secret's key as an environment variable of the same name. */}}
{{- define "pingvas.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .name }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end -}}

{{/* A map of settings (services/common/settings.py variables) as env entries, sorted by name. */}}
{{- define "pingvas.envMap" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/*
What every Python process reads (CommonSettings, ObjectStoreSettings, LemonSqueezySettings,
OAuthSettings): where it runs, its tenant role, Redis, the signing secrets, and the secrets
`startup.py` checks in prod in every process.
*/}}
{{- define "pingvas.commonEnv" -}}
- name: PINGVAS_ENV
  value: {{ .Values.environment | quote }}
- name: PINGVAS_DB_SCHEMA
  value: {{ .Values.dbSchema | quote }}
- name: PINGVAS_PUBLIC_URL
  value: {{ .Values.publicUrl | quote }}
- name: PINGVAS_HOME
  value: /var/lib/pingvas
{{ include "pingvas.secretEnv" (dict "name" "DATABASE_URL" "secret" .Values.existingSecrets.database) }}
{{ include "pingvas.secretEnv" (dict "name" "REDIS_URL" "secret" .Values.existingSecrets.redis) }}
{{ include "pingvas.secretEnv" (dict "name" "PINGVAS_JWT_SECRET" "secret" .Values.existingSecrets.signing) }}
{{ include "pingvas.secretEnv" (dict "name" "PINGVAS_URL_SIGNING_SECRET" "secret" .Values.existingSecrets.signing) }}
{{ include "pingvas.secretEnv" (dict "name" "PINGVAS_LEMONSQUEEZY_API_KEY" "secret" .Values.existingSecrets.lemonSqueezy) }}
{{ include "pingvas.secretEnv" (dict "name" "PINGVAS_LEMONSQUEEZY_WEBHOOK_SECRET" "secret" .Values.existingSecrets.lemonSqueezy) }}
{{ include "pingvas.secretEnv" (dict "name" "PINGVAS_OAUTH_GOOGLE_CLIENT_ID" "secret" .Values.existingSecrets.oauth "optional" true) }}
{{ include "pingvas.secretEnv" (dict "name" "PINGVAS_OAUTH_GOOGLE_CLIENT_SECRET" "secret" .Values.existingSecrets.oauth "optional" true) }}
{{ include "pingvas.secretEnv" (dict "name" "PINGVAS_OAUTH_DISCORD_CLIENT_ID" "secret" .Values.existingSecrets.oauth "optional" true) }}
{{ include "pingvas.secretEnv" (dict "name" "PINGVAS_OAUTH_DISCORD_CLIENT_SECRET" "secret" .Values.existingSecrets.oauth "optional" true) }}
{{- include "pingvas.envMap" .Values.env }}
{{- end -}}

{{/* Spread a component's pods over zones and nodes. */}}
{{- define "pingvas.topologySpread" -}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "pingvas.selectorLabels" . | nindent 8 }}
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "pingvas.selectorLabels" . | nindent 8 }}
{{- end -}}

{{/* checkov skips that hold for every workload, each with its reason. */}}
{{- define "pingvas.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_43=Images are pinned by tag here; the release pipeline pins digests (helm/pingvas/README.md)
checkov.io/skip2: CKV_K8S_35=Settings are environment variables by design (pydantic-settings); secrets come from existingSecrets via secretKeyRef, never from values
checkov.io/skip3: CKV_K8S_15=Tags are immutable in the release registry, so IfNotPresent pulls the same image and spares a pull per start
{{- end -}}

{{/*
The gateway's Envoy config (files/, rendered by `pingvas gateway render`). With
env.OTEL_EXPORTER_OTLP_ENDPOINT set, the traced rendering, its collector placeholders
(gateway/cluster.py) replaced by the endpoint's host and port, so that Envoy starts each
request's trace as it does under `pingvas up`; without it, the config without a tracer.
*/}}
{{- define "pingvas.envoyConfig" -}}
{{- $endpoint := .Values.env.OTEL_EXPORTER_OTLP_ENDPOINT | default "" -}}
{{- if $endpoint -}}
{{- $url := urlParse $endpoint -}}
{{- $hostPort := splitList ":" $url.host -}}
{{- if or (not $url.scheme) (not (first $hostPort)) -}}
{{- fail (printf "env.OTEL_EXPORTER_OTLP_ENDPOINT must be a URL such as http://otel-collector.observability:4317, not %q" $endpoint) -}}
{{- end -}}
{{- $port := ternary (last $hostPort) "4317" (eq (len $hostPort) 2) -}}
{{- .Files.Get "files/envoy-traced.json" | replace "\"otlp-collector.pingvas.invalid\"" (quote (first $hostPort)) | replace "\"port_value\": 64317" (printf "\"port_value\": %s" $port) -}}
{{- else -}}
{{- .Files.Get "files/envoy.json" -}}
{{- end -}}
{{- end -}}
