{{/* Names, labels, and the checks that refuse values which cannot work. */}}

{{- define "receiver.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "receiver.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "receiver.selectorLabels" -}}
app.kubernetes.io/name: {{ include "receiver.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
The roles this release runs as Deployments: "all" (each pod runs the edge and
supervises a worker process), or "edge" and "worker" (worker.separate).
*/}}
{{- define "receiver.roles" -}}
{{- if .Values.worker.separate -}}
{{- toYaml (list "edge" "worker") -}}
{{- else -}}
{{- toYaml (list "all") -}}
{{- end -}}
{{- end -}}

{{/* Selector labels of one role's pods (list $ role): "all" adds nothing. */}}
{{- define "receiver.roleSelectorLabels" -}}
{{- $root := index . 0 -}}
{{- $role := index . 1 -}}
{{ include "receiver.selectorLabels" $root }}
{{- if ne $role "all" }}
app.kubernetes.io/component: {{ $role }}
{{- end -}}
{{- end -}}

{{/* The pods that answer webhooks and the API: what the Service selects. */}}
{{- define "receiver.edgeSelectorLabels" -}}
{{ include "receiver.roleSelectorLabels" (list . (ternary "edge" "all" (eq (toString .Values.worker.separate) "true"))) }}
{{- end -}}

{{- define "receiver.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "receiver.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- range $k, $v := .Values.commonLabels }}
{{- if not (has $k (list "helm.sh/chart" "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/version" "app.kubernetes.io/managed-by")) }}
{{ $k }}: {{ $v | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
The chart's labels plus an object's own (list $ extraLabels): one key once, the
chart's labels winning, so no extra label can break a selector.
*/}}
{{- define "receiver.labelsWith" -}}
{{- $root := index . 0 -}}
{{- $all := merge (fromYaml (include "receiver.labels" $root)) (index . 1 | default dict) -}}
{{- toYaml $all -}}
{{- end -}}

{{/* Pod template labels: selector labels, then commonLabels and podLabels. */}}
{{- define "receiver.podLabels" -}}
{{- $all := merge (fromYaml (include "receiver.selectorLabels" .)) (deepCopy (.Values.podLabels | default dict)) (deepCopy (.Values.commonLabels | default dict)) -}}
{{- toYaml $all -}}
{{- end -}}

{{- define "receiver.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "receiver.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image: [global.imageRegistry or image.registry/]repository, then @digest or :tag. */}}
{{- define "receiver.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- $registry := .Values.image.registry -}}
{{- with .Values.global }}{{ with .imageRegistry }}{{ $registry = . }}{{ end }}{{ end -}}
{{- $repository := .Values.image.repository -}}
{{- if $registry }}{{ $repository = printf "%s/%s" (trimSuffix "/" $registry) $repository }}{{ end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}
{{- end -}}

{{/* imagePullSecrets and global.imagePullSecrets (names or {name}), deduplicated. */}}
{{- define "receiver.imagePullSecrets" -}}
{{- $names := list -}}
{{- range .Values.imagePullSecrets }}{{ $names = append $names .name }}{{ end -}}
{{- with .Values.global -}}
{{- range (.imagePullSecrets | default list) -}}
{{- if kindIs "string" . }}{{ $names = append $names . }}{{ else }}{{ $names = append $names .name }}{{ end -}}
{{- end -}}
{{- end -}}
{{- range uniq $names }}
- name: {{ . }}
{{- end }}
{{- end -}}

{{/* Whether the store is Redis (shared, replicas) rather than SQLite on a volume. */}}
{{- define "receiver.redisStore" -}}
{{- if or .Values.store.redis.url .Values.store.redis.existingSecret -}}true{{- end -}}
{{- end -}}

{{/*
The Secret of credentials the chart mounts but never writes: credentials.existingSecret,
or, when no credential is given at all and generateToken is off (the default),
<fullname>-credentials, which the operator (or Sealed Secrets, External Secrets...)
creates. Nothing random is rendered, so `helm template` is the same every time.
*/}}
{{- define "receiver.credentialsSecret" -}}
{{- $c := .Values.credentials -}}
{{- if $c.existingSecret -}}
{{- $c.existingSecret -}}
{{- else if not (or $c.authTokens $c.basicAuth $c.pagerdutySecrets $c.routingKeys $c.generateToken) -}}
{{- printf "%s-credentials" (include "receiver.fullname" .) | trunc 253 -}}
{{- end -}}
{{- end -}}

{{/* Secret keys the chart creates, as a YAML map: setting name -> value. */}}
{{- define "receiver.inlineSecrets" -}}
{{- $c := .Values.credentials -}}
{{- $out := dict -}}
{{- if $c.authTokens }}{{ $_ := set $out "auth_tokens" (join "\n" $c.authTokens) }}{{ end -}}
{{- if $c.basicAuth }}{{ $_ := set $out "basic_auth" $c.basicAuth }}{{ end -}}
{{- if $c.pagerdutySecrets }}{{ $_ := set $out "pagerduty_secrets" (join "\n" $c.pagerdutySecrets) }}{{ end -}}
{{- if $c.routingKeys }}{{ $_ := set $out "routing_keys" (join "\n" $c.routingKeys) }}{{ end -}}
{{- range $k, $v := $c.extra }}{{ $_ := set $out $k $v }}{{ end -}}
{{- if .Values.store.redis.url }}{{ $_ := set $out "store" .Values.store.redis.url }}{{ end -}}
{{- if and $c.generateToken (not (hasKey $out "auth_tokens")) (not (and $c.existingSecret (has "auth_tokens" $c.existingSecretKeys))) -}}
{{- $name := include "receiver.fullname" . -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $name -}}
{{- $token := "" -}}
{{- if and $existing $existing.data (hasKey $existing.data "auth_tokens") -}}
{{- $token = index $existing.data "auth_tokens" | b64dec -}}
{{- else if lookup "v1" "ServiceAccount" .Release.Namespace "default" -}}
{{- /* A reachable cluster (every namespace has this ServiceAccount): first install. */ -}}
{{- $token = randAlphaNum 40 -}}
{{- else -}}
{{- fail (printf "credentials.generateToken: true needs the cluster to keep the token it generates, and none is reachable here (helm template, Argo CD, helm lint, --dry-run, or namespace %s does not exist yet): every render would make a new token and rewrite the Secret Alertmanager's copy came from. Create the Secret once (kubectl -n %s create secret generic %s-credentials --from-literal=auth_tokens=$(openssl rand -hex 32)) and set generateToken: false: the chart then mounts that Secret" .Release.Namespace .Release.Namespace $name) -}}
{{- end -}}
{{- $_ := set $out "auth_tokens" $token -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* RECEIVER_<NAME>_FILE for every secret setting: setting name -> file path. */}}
{{- define "receiver.secretFiles" -}}
{{- $inline := fromYaml (include "receiver.inlineSecrets" .) -}}
{{- $c := .Values.credentials -}}
{{- $secret := include "receiver.credentialsSecret" . -}}
{{- $out := dict -}}
{{- range $k, $_ := $inline }}{{ $_ := set $out $k (printf "/etc/receiver/secrets/%s" $k) }}{{ end -}}
{{- if $secret -}}
{{- range $c.existingSecretKeys -}}
{{- if hasKey $out . -}}
{{- fail (printf "credentials: %q is set both inline and in credentials.existingSecret %q; keep one" . $secret) -}}
{{- end -}}
{{- $_ := set $out . (printf "/etc/receiver/credentials/%s" .) -}}
{{- end -}}
{{- end -}}
{{- if .Values.store.redis.existingSecret -}}
{{- $_ := set $out "store" "/etc/receiver/store/url" -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* RECEIVER_RULES: the files to load (rule tests, *.test.yaml, are left out). */}}
{{- define "receiver.rulesPath" -}}
{{- $files := list -}}
{{- if .Values.rules.files -}}
{{- $files = keys .Values.rules.files | sortAlpha -}}
{{- else if .Values.rules.existingConfigMap.name -}}
{{- $files = .Values.rules.existingConfigMap.files -}}
{{- end -}}
{{- $paths := list -}}
{{- range $files -}}
{{- if not (or (hasSuffix ".test.yaml" .) (hasSuffix ".test.yml" .)) -}}
{{- $paths = append $paths (printf "/etc/receiver/rules/%s" .) -}}
{{- end -}}
{{- end -}}
{{- if $files -}}
{{- join "," $paths -}}
{{- else -}}
/etc/receiver/rules
{{- end -}}
{{- end -}}

{{/* Namespaces the receiver may act in (RECEIVER_NAMESPACES and the Roles). */}}
{{- define "receiver.targetNamespaces" -}}
{{- if .Values.rbac.namespaces -}}
{{- toYaml (uniq .Values.rbac.namespaces) -}}
{{- else if not .Values.rbac.clusterWide -}}
{{- toYaml (list .Release.Namespace) -}}
{{- else -}}
[]
{{- end -}}
{{- end -}}

{{/* Refuse values that would render a receiver that cannot work. */}}
{{- define "receiver.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not (include "receiver.redisStore" .)) -}}
{{- fail (printf "replicaCount is %d, but the default SQLite store serves a single replica: set store.redis.url (or store.redis.existingSecret) so the replicas share one Redis store, or set replicaCount: 1" (int .Values.replicaCount)) -}}
{{- end -}}
{{- if and .Values.worker.separate (not (include "receiver.redisStore" .)) -}}
{{- fail "worker.separate: true runs the edge and the worker in different pods, which share their journal only through the Redis store: set store.redis.url (or store.redis.existingSecret), or set worker.separate: false (each pod then runs both roles)" -}}
{{- end -}}
{{- if and .Values.rules.files .Values.rules.existingConfigMap.name -}}
{{- fail "rules: set either rules.files or rules.existingConfigMap, not both" -}}
{{- end -}}
{{- if and .Values.rules.existingConfigMap.name (not .Values.rules.existingConfigMap.files) -}}
{{- fail "rules.existingConfigMap.files must name the ConfigMap keys to load, e.g. [team.yaml]" -}}
{{- end -}}
{{- if and .Values.store.redis.url .Values.store.redis.existingSecret -}}
{{- fail "store.redis: set either url or existingSecret, not both" -}}
{{- end -}}
{{- $sc := .Values.securityContext -}}
{{- if or $sc.privileged $sc.allowPrivilegeEscalation (eq (toString $sc.runAsNonRoot) "false") -}}
{{- fail "securityContext: the receiver needs no privileges; privileged, allowPrivilegeEscalation: true and runAsNonRoot: false are refused (override other fields, e.g. runAsUser or seLinuxOptions)" -}}
{{- end -}}
{{- $managed := list "RECEIVER_HOST" "RECEIVER_PORT" "RECEIVER_MODE" "RECEIVER_RULES" "RECEIVER_STORE" "RECEIVER_KUBE_MODE" "RECEIVER_NAMESPACES" "TMPDIR" -}}
{{- range $name, $_ := fromYaml (include "receiver.secretFiles" .) }}{{ $managed = append $managed (printf "RECEIVER_%s_FILE" (upper $name)) }}{{ end -}}
{{- range $name, $_ := .Values.settings }}{{ $managed = append $managed (printf "RECEIVER_%s" (upper $name)) }}{{ end -}}
{{- range .Values.extraEnv -}}
{{- if has .name $managed -}}
{{- fail (printf "extraEnv: %s is set by the chart; use the value that controls it (mode, rules, store, rbac.namespaces, credentials or settings) instead" .name) -}}
{{- end -}}
{{- end -}}
{{- $files := fromYaml (include "receiver.secretFiles" .) -}}
{{- if not (or (hasKey $files "auth_tokens") (hasKey $files "basic_auth") (hasKey $files "pagerduty_secrets") (hasKey $files "routing_keys")) -}}
{{- fail "credentials: the receiver listens on the pod network and refuses to start without credentials; list auth_tokens (or basic_auth, pagerduty_secrets, routing_keys) in credentials.existingSecretKeys, or set credentials.authTokens or credentials.basicAuth" -}}
{{- end -}}
{{- end -}}

{{/* A settings value as an environment string: lists comma-joined, whole numbers
without an exponent (Helm reads every number as a float). */}}
{{- define "receiver.envValue" -}}
{{- if kindIs "slice" . -}}
{{- $items := list -}}
{{- range . }}{{ $items = append $items (include "receiver.envValue" .) }}{{ end -}}
{{- join "," $items -}}
{{- else if and (kindIs "float64" .) (eq (floor .) .) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}
