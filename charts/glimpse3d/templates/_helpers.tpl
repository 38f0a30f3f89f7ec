{{/*
Names. Resource names are <fullname>-<component>; fullname is cut to 40 characters so that the
longest component ("triton-reconstruction") still fits the 63-character limit.
*/}}
{{- define "glimpse3d.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "glimpse3d.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Kubernetes recommended labels; call with (dict "root" $ "component" "gateway"). */}}
{{- define "glimpse3d.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "glimpse3d.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: glimpse3d
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "glimpse3d.selectorLabels" -}}
app.kubernetes.io/name: {{ include "glimpse3d.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Image reference; call with (dict "root" $ "image" <values image block>). */}}
{{- define "glimpse3d.image" -}}
{{- $repo := .image.repository -}}
{{- if .image.variant -}}{{- $repo = printf "%s-%s" $repo .image.variant -}}{{- end -}}
{{- if .root.Values.image.registry -}}{{- $repo = printf "%s/%s" (trimSuffix "/" .root.Values.image.registry) $repo -}}{{- end -}}
{{- printf "%s:%s" $repo (.image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{/*
Every workload of the release as YAML {items: [...]}: the gateway, each enabled service and, with
triton.enabled, each enabled Triton group. Each item: component (label), kind (gateway, service or
triton), key (its name under services/triton.groups), name (Deployment/Service name) and values.
*/}}
{{- define "glimpse3d.workloads" -}}
{{- $fullname := include "glimpse3d.fullname" . -}}
items:
  - component: gateway
    kind: gateway
    key: gateway
    name: {{ printf "%s-gateway" $fullname }}
    values: {{- toYaml .Values.gateway | nindent 6 }}
{{- range $key := keys .Values.services | sortAlpha }}
{{- $svc := index $.Values.services $key }}
{{- if $svc.enabled }}
  - component: {{ $key }}
    kind: service
    key: {{ $key }}
    name: {{ printf "%s-%s" $fullname $key }}
    values: {{- toYaml $svc | nindent 6 }}
{{- end }}
{{- end }}
{{- if .Values.triton.enabled }}
{{- range $key := keys .Values.triton.groups | sortAlpha }}
{{- $group := index $.Values.triton.groups $key }}
{{- if $group.enabled }}
  - component: {{ printf "triton-%s" $key }}
    kind: triton
    key: {{ $key }}
    name: {{ printf "%s-triton-%s" $fullname $key }}
    values: {{- toYaml $group | nindent 6 }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Container ports of a workload item as YAML {ports: [{name, port}]}; call with (dict "root" $ "w" item). */}}
{{- define "glimpse3d.ports" -}}
{{- $v := .root.Values -}}
ports:
{{- if eq .w.kind "triton" }}
  - {name: http, port: {{ int $v.triton.ports.http }}}
  - {name: grpc, port: {{ int $v.triton.ports.grpc }}}
  - {name: metrics, port: {{ int $v.triton.ports.metrics }}}
{{- else }}
  - {name: grpc, port: {{ int $v.server.grpcPort }}}
{{- if eq .w.kind "gateway" }}
  - {name: http, port: {{ int $v.gateway.httpPort }}}
{{- end }}
  - {name: metrics, port: {{ int $v.server.metricsPort }}}
{{- end }}
{{- end -}}

{{/* Which stores are configured. */}}
{{- define "glimpse3d.databaseMode" -}}
{{- if .Values.postgresql.enabled -}}bundled{{- else if .Values.externalDatabase.host -}}external{{- else -}}sqlite{{- end -}}
{{- end -}}

{{- define "glimpse3d.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "%s-minio:9000" (include "glimpse3d.fullname" .) -}}
{{- else -}}
{{- .Values.externalS3.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "glimpse3d.minioSecretName" -}}
{{- .Values.minio.auth.existingSecret | default (printf "%s-minio" (include "glimpse3d.fullname" .)) -}}
{{- end -}}

{{- define "glimpse3d.postgresqlSecretName" -}}
{{- .Values.postgresql.auth.existingSecret | default (printf "%s-postgresql" (include "glimpse3d.fullname" .)) -}}
{{- end -}}

{{/* The gateway's auth Secrets (gateway.auth) and where their files are mounted. */}}
{{- define "glimpse3d.apiKeysSecretName" -}}
{{- .Values.gateway.auth.apiKeys.existingSecret | default (printf "%s-gateway-api-keys" (include "glimpse3d.fullname" .)) -}}
{{- end -}}

{{- define "glimpse3d.ticketSecretName" -}}
{{- .Values.gateway.auth.ticketSecret.existingSecret | default (printf "%s-gateway-auth" (include "glimpse3d.fullname" .)) -}}
{{- end -}}

{{- define "glimpse3d.apiKeysDir" -}}/etc/glimpse3d/api-keys{{- end -}}

{{- define "glimpse3d.jwksDir" -}}/etc/glimpse3d/jwks{{- end -}}

{{- define "glimpse3d.tlsDir" -}}/etc/glimpse3d/tls{{- end -}}

{{/* The TLS Secret of a workload (tls.existingSecret.<component>, else the one its Certificate fills);
call with (dict "root" $ "w" item). */}}
{{- define "glimpse3d.tlsSecretName" -}}
{{- $existing := .root.Values.tls.existingSecret | default dict -}}
{{- if $existing -}}{{ index $existing .w.component | default "" }}{{- else -}}{{ printf "%s-tls" .w.name }}{{- end -}}
{{- end -}}

{{/* env entries with the S3 keys, for the gateway and the services. */}}
{{- define "glimpse3d.s3SecretEnv" -}}
{{- if .Values.minio.enabled }}
- name: GLIMPSE3D_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "glimpse3d.minioSecretName" . }}, key: root-user}
- name: GLIMPSE3D_S3_SECRET_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "glimpse3d.minioSecretName" . }}, key: root-password}
{{- else }}
- name: GLIMPSE3D_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ .Values.externalS3.existingSecret }}, key: {{ .Values.externalS3.accessKeyKey }}}
- name: GLIMPSE3D_S3_SECRET_KEY
  valueFrom:
    secretKeyRef: {name: {{ .Values.externalS3.existingSecret }}, key: {{ .Values.externalS3.secretKeyKey }}}
{{- end }}
{{- end -}}

{{/*
The GLIMPSE3D_* settings of a gateway or service workload (its ConfigMap data) as a YAML map.
Keys in the workload's `config` that the chart sets itself fail the render.
*/}}
{{- define "glimpse3d.configData" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $w := .w -}}
{{- $fullname := include "glimpse3d.fullname" $root -}}
{{- $env := dict
  "GLIMPSE3D_HOST" $v.server.bindHost
  "GLIMPSE3D_PORT" (toString (int $v.server.grpcPort))
  "GLIMPSE3D_METRICS_HOST" $v.server.bindHost
  "GLIMPSE3D_METRICS_PORT" (toString (int $v.server.metricsPort))
  "GLIMPSE3D_GRACE_SECONDS" (toString $v.server.graceSeconds)
  "GLIMPSE3D_LOG_LEVEL" $v.server.logLevel
  "GLIMPSE3D_LOG_JSON" (toString $v.server.logJson)
  "GLIMPSE3D_ARTIFACTS_URL" (printf "s3://%s%s" $v.artifacts.bucket (ternary (printf "/%s" (trimPrefix "/" $v.artifacts.prefix)) "" (ne $v.artifacts.prefix "")))
  "GLIMPSE3D_S3_ENDPOINT" (include "glimpse3d.s3Endpoint" $root)
  "GLIMPSE3D_S3_SECURE" (ternary "false" (toString $v.externalS3.secure) $v.minio.enabled)
  "GLIMPSE3D_S3_ACCESS_KEY" "(from the Secret)"
  "GLIMPSE3D_S3_SECRET_KEY" "(from the Secret)"
  "GLIMPSE3D_READY_FILE" "(not used in a cluster)"
  "HOME" "/tmp"
  "XDG_CACHE_HOME" "/cache"
  "HF_HOME" "/cache/huggingface"
-}}
{{- if not (kindIs "invalid" $v.artifacts.tempExpiryDays) -}}
{{- $_ := set $env "GLIMPSE3D_S3_TEMP_EXPIRY_DAYS" (toString (int $v.artifacts.tempExpiryDays)) -}}
{{- end -}}
{{- if eq $w.kind "gateway" -}}
{{- $_ := set $env "GLIMPSE3D_HTTP_HOST" $v.server.bindHost -}}
{{- $_ := set $env "GLIMPSE3D_HTTP_PORT" (toString (int $v.gateway.httpPort)) -}}
{{- $_ := set $env "GLIMPSE3D_REPLICA_ID" "(the pod name)" -}}
{{- $auth := $v.gateway.auth -}}
{{- $jwks := $auth.jwks.url -}}
{{- if $auth.jwks.configMap -}}{{- $jwks = printf "%s/%s" (include "glimpse3d.jwksDir" $root) $auth.jwks.configMapKey -}}{{- end -}}
{{- $_ := set $env "GLIMPSE3D_AUTH_MODE" "auto" -}}
{{- $_ := set $env "GLIMPSE3D_AUTH_JWKS" $jwks -}}
{{- $_ := set $env "GLIMPSE3D_AUTH_ISSUER" $auth.issuer -}}
{{- $_ := set $env "GLIMPSE3D_AUTH_AUDIENCE" $auth.audience -}}
{{- $_ := set $env "GLIMPSE3D_AUTH_TENANT_CLAIM" $auth.tenantClaim -}}
{{- if $auth.apiKeys.enabled -}}
{{- $_ := set $env "GLIMPSE3D_AUTH_API_KEYS_FILE" (printf "%s/%s" (include "glimpse3d.apiKeysDir" $root) $auth.apiKeys.key) -}}
{{- else -}}
{{- $_ := set $env "GLIMPSE3D_AUTH_API_KEYS_FILE" "(set by gateway.auth.apiKeys)" -}}
{{- end -}}
{{- $_ := set $env "GLIMPSE3D_AUTH_TICKET_SECRET" "(from the Secret)" -}}
{{- $_ := set $env "GLIMPSE3D_AUTH_INSECURE_ALLOW_UNAUTHENTICATED" (toString $auth.insecureAllowUnauthenticated) -}}
{{- range $key := keys $v.services | sortAlpha -}}
{{- $_ := set $env (printf "GLIMPSE3D_%s_ADDR" (upper $key)) (printf "%s-%s:%d" $fullname $key (int $v.server.grpcPort)) -}}
{{- end -}}
{{- $mode := include "glimpse3d.databaseMode" $root -}}
{{- if eq $mode "bundled" -}}
{{- $_ := set $env "GLIMPSE3D_DB_URL" (printf "postgresql://%s@%s-postgresql:5432/%s" $v.postgresql.user $fullname $v.postgresql.database) -}}
{{- else if eq $mode "external" -}}
{{- $db := $v.externalDatabase -}}
{{- $url := printf "postgresql://%s@%s:%d/%s" $db.user $db.host (int $db.port) $db.database -}}
{{- if $db.params }}{{ $url = printf "%s?%s" $url $db.params }}{{ end -}}
{{- $_ := set $env "GLIMPSE3D_DB_URL" $url -}}
{{- else -}}
{{- $_ := set $env "GLIMPSE3D_DB_URL" "" -}}
{{- $_ := set $env "GLIMPSE3D_DB_PATH" "/data/jobs.sqlite3" -}}
{{- end -}}
{{- else -}}
{{- $opts := deepCopy ($w.values.backendOptions | default dict) -}}
{{- if eq $w.values.backend "triton" -}}
{{- if not (hasKey $opts "url") -}}
{{- $_ := set $opts "url" (printf "%s-triton-%s:%d" $fullname $w.values.tritonGroup (int $v.triton.ports.grpc)) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $env "GLIMPSE3D_BACKEND" $w.values.backend -}}
{{- $_ := set $env "GLIMPSE3D_BACKEND_OPTIONS" (ternary (toJson $opts) "" (gt (len $opts) 0)) -}}
{{- $_ := set $env "GLIMPSE3D_MAX_CONCURRENCY" (toString (int $w.values.maxConcurrency)) -}}
{{- $_ := set $env "GLIMPSE3D_MAX_WAITING" (toString (int $w.values.maxWaiting)) -}}
{{- $_ := set $env "GLIMPSE3D_TORCH_THREADS" (toString (int $w.values.torchThreads)) -}}
{{- $_ := set $env "GLIMPSE3D_DEVICE" $w.values.device -}}
{{- if $w.values.mountModels -}}
{{- $_ := set $env "GLIMPSE3D_MODEL_DIR" $v.models.mountPath -}}
{{- else -}}
{{- $_ := set $env "GLIMPSE3D_MODEL_DIR" "(set by mountModels)" -}}
{{- end -}}
{{- end -}}
{{- $tlsDir := include "glimpse3d.tlsDir" $root -}}
{{- $tlsOn := $v.tls.enabled -}}
{{- $_ := set $env "GLIMPSE3D_TLS_CERT_FILE" (ternary (printf "%s/tls.crt" $tlsDir) "(set by tls)" $tlsOn) -}}
{{- $_ := set $env "GLIMPSE3D_TLS_KEY_FILE" (ternary (printf "%s/tls.key" $tlsDir) "(set by tls)" $tlsOn) -}}
{{- $_ := set $env "GLIMPSE3D_TLS_CA_FILE" (ternary (printf "%s/ca.crt" $tlsDir) "(set by tls)" $tlsOn) -}}
{{- $_ := set $env "GLIMPSE3D_TLS_CLIENT_CERT_FILE" (ternary (printf "%s/tls.crt" $tlsDir) "(set by tls)" $tlsOn) -}}
{{- $_ := set $env "GLIMPSE3D_TLS_CLIENT_KEY_FILE" (ternary (printf "%s/tls.key" $tlsDir) "(set by tls)" $tlsOn) -}}
{{- $mutual := and $tlsOn $v.tls.mutual (ne $w.kind "gateway") -}}
{{- $_ := set $env "GLIMPSE3D_TLS_CLIENT_CA_FILE" (ternary (printf "%s/ca.crt" $tlsDir) "(set by tls.mutual)" $mutual) -}}
{{- $reserved := keys $env -}}
{{- /* placeholders "(...)" only reserve their names; they are not part of the ConfigMap */ -}}
{{- range $key, $value := $env -}}
{{- if hasPrefix "(" $value -}}{{- $_ := unset $env $key -}}{{- end -}}
{{- end -}}
{{- $prefix := ternary "gateway" (printf "services.%s" $w.key) (eq $w.kind "gateway") -}}
{{- range $key, $value := $w.values.config -}}
{{- $name := printf "GLIMPSE3D_%s" $key -}}
{{- if has $name $reserved -}}
{{- fail (printf "%s.config.%s: %s is set by the chart from other values (see values.yaml); remove it from config" $prefix $key $name) -}}
{{- end -}}
{{- $_ := set $env $name (toString $value) -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* nodeSelector and tolerations of a workload: its node pool's, then its own. */}}
{{- define "glimpse3d.placement" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $selector := dict -}}
{{- $tolerations := list -}}
{{- if $v.nodePool -}}
{{- $pool := index $root.Values.nodePools $v.nodePool -}}
{{- $selector = merge $selector (deepCopy ($pool.nodeSelector | default dict)) -}}
{{- $tolerations = concat $tolerations ($pool.tolerations | default list) -}}
{{- end -}}
{{- $selector = mergeOverwrite $selector (deepCopy ($v.nodeSelector | default dict)) -}}
{{- $tolerations = concat $tolerations ($v.tolerations | default list) -}}
{{- with $selector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{- define "glimpse3d.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ int .runAsUser }}
runAsGroup: {{ int .runAsGroup }}
fsGroup: {{ int .fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "glimpse3d.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Resources with the GPU limit added; call with (dict "resources" .. "gpu" ..). */}}
{{- define "glimpse3d.resources" -}}
{{- $res := deepCopy (.resources | default dict) -}}
{{- if and .gpu (gt (int .gpu.count) 0) -}}
{{- $limits := $res.limits | default dict -}}
{{- $_ := set $limits .gpu.resourceName (int .gpu.count) -}}
{{- $_ := set $res "limits" $limits -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* The gRPC probes of a gateway or service container; call with (dict "probes" .. "port" .. "tls" bool). */}}
{{- define "glimpse3d.grpcProbes" -}}
{{- range $probe := list "startup" "readiness" "liveness" }}
{{- $p := index $.probes $probe }}
{{ $probe }}Probe:
  {{- if $.tls }}
  {{- /* the kubelet's gRPC probe cannot do TLS; the image's health check can (it reads GLIMPSE3D_TLS_*) */}}
  exec:
    command: [python, -m, glimpse3d.core.healthcheck, --timeout, {{ max 1 (sub (int $p.timeoutSeconds) 1) | quote }}]
  {{- else }}
  grpc: {port: {{ $.port }}}
  {{- end }}
  periodSeconds: {{ int $p.periodSeconds }}
  failureThreshold: {{ int $p.failureThreshold }}
  timeoutSeconds: {{ int $p.timeoutSeconds }}
{{- end }}
{{- end -}}

{{/* Rendered query of an autoscaling signal; call with (dict "root" $ "w" item "query" ..). */}}
{{- define "glimpse3d.signalQuery" -}}
{{- $ctx := merge (dict "service" .w.name "component" .w.component) .root -}}
{{- tpl .query $ctx -}}
{{- end -}}

{{/* External metric name of a signal (unique per release and component). */}}
{{- define "glimpse3d.signalMetric" -}}
{{- printf "%s_%s_%s" (include "glimpse3d.fullname" .root) .w.component .signal.name | replace "-" "_" -}}
{{- end -}}
