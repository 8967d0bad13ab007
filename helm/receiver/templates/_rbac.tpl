{{/*
What each step type needs from the Kubernetes API: [apiGroup, resource, [verbs]].
Generated from the step registry (the `rbac` of each step model in
receiver/steps/k8s/, and of the two Kubernetes verifications,
k8s.rollout_status and k8s.pods_ready, which a remediation's `verify:` uses) by
`scripts/rbac-steps.py --chart`; tests/test_helm.py fails when the two differ.
Step types not listed here (redis.*, http.*, prometheus.*, changes.*) need no
Kubernetes access.
*/}}
{{- define "receiver.stepRbac" -}}
k8s.pods:
  - ["", pods, [list]]
  - ["apps", deployments, [get]]
  - ["apps", statefulsets, [get]]
  - ["apps", daemonsets, [get]]
k8s.events:
  - ["", events, [list]]
k8s.logs:
  - ["", pods, [list, get]]
  - ["", pods/log, [get]]
  - ["apps", deployments, [get]]
  - ["apps", statefulsets, [get]]
  - ["apps", daemonsets, [get]]
k8s.rollout_history:
  - ["apps", deployments, [get]]
  - ["apps", replicasets, [list]]
k8s.describe:
  - ["apps", deployments, [get]]
  - ["apps", statefulsets, [get]]
  - ["apps", daemonsets, [get]]
  - ["autoscaling", horizontalpodautoscalers, [get]]
  - ["", pods, [get]]
k8s.rollout_restart:
  - ["apps", deployments, [get, patch]]
  - ["apps", statefulsets, [get, patch]]
  - ["apps", daemonsets, [get, patch]]
k8s.rollout_undo:
  - ["apps", deployments, [get, patch]]
  - ["apps", replicasets, [list]]
k8s.scale:
  - ["apps", deployments/scale, [get, patch]]
  - ["apps", statefulsets/scale, [get, patch]]
k8s.patch_hpa:
  - ["autoscaling", horizontalpodautoscalers, [get, patch]]
k8s.delete_pod:
  - ["", pods, [list, get, delete]]
k8s.set_memory_limit:
  - ["apps", deployments, [get, patch]]
  - ["apps", statefulsets, [get, patch]]
  - ["apps", daemonsets, [get, patch]]
k8s.rollout_status:
  - ["apps", deployments, [get]]
  - ["apps", statefulsets, [get]]
  - ["apps", daemonsets, [get]]
  - ["autoscaling", horizontalpodautoscalers, [get]]
k8s.pods_ready:
  - ["", pods, [list]]
  - ["apps", deployments, [get]]
  - ["apps", statefulsets, [get]]
  - ["apps", daemonsets, [get]]
  - ["autoscaling", horizontalpodautoscalers, [get]]
{{- end -}}

{{/* Every step type per family, for `rbac.steps: [k8s]`. */}}
{{- define "receiver.stepFamilies" -}}
k8s: [k8s.pods, k8s.events, k8s.logs, k8s.rollout_history, k8s.describe, k8s.rollout_restart, k8s.rollout_undo, k8s.scale, k8s.patch_hpa, k8s.delete_pod, k8s.set_memory_limit, k8s.rollout_status, k8s.pods_ready]
redis: [redis.get, redis.info, redis.delete_keys, redis.delete_pattern, redis.reset_circuit_breaker]
http: [http.get, http.request]
prometheus: [prometheus.query]
changes: [changes.recent]
{{- end -}}

{{/*
The PolicyRules: rbac.rules as given (generated per target by
scripts/rbac-steps.py), else for rbac.steps: one rule per (apiGroup, resource), verbs merged
across the steps and sorted, rules sorted by apiGroup then resource. Empty when no
listed step touches Kubernetes.
*/}}
{{- define "receiver.rbacRules" -}}
{{- if .Values.rbac.rules -}}
{{- /* Exact grants computed from the rule files (scripts/rbac-steps.py). */ -}}
{{- toYaml .Values.rbac.rules -}}
{{- else -}}
{{- $map := fromYaml (include "receiver.stepRbac" .) -}}
{{- $families := fromYaml (include "receiver.stepFamilies" .) -}}
{{- $steps := list -}}
{{- range .Values.rbac.steps -}}
{{- if hasKey $families . -}}
{{- $steps = concat $steps (get $families .) -}}
{{- else -}}
{{- $steps = append $steps . -}}
{{- end -}}
{{- end -}}
{{- $grants := dict -}}
{{- range $step := uniq $steps -}}
{{- range $rule := (get $map $step | default list) -}}
{{- $key := printf "%s|%s" (index $rule 0) (index $rule 1) -}}
{{- $verbs := get $grants $key | default list -}}
{{- $_ := set $grants $key (concat $verbs (index $rule 2) | uniq | sortAlpha) -}}
{{- end -}}
{{- end -}}
{{- range $key := keys $grants | sortAlpha }}
{{- $parts := splitList "|" $key }}
- apiGroups: [{{ index $parts 0 | quote }}]
  resources: [{{ index $parts 1 | quote }}]
  verbs: [{{ range $i, $v := get $grants $key }}{{ if $i }}, {{ end }}{{ $v | quote }}{{ end }}]
{{- end }}
{{- end }}
{{- end -}}
