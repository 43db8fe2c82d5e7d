{{/* Object names: <release>-elastiserve unless the release name already says it. */}}
{{- define "elastiserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "elastiserve.fullname" -}}
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

{{- define "elastiserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "elastiserve.labels" -}}
helm.sh/chart: {{ include "elastiserve.chart" . }}
{{ include "elastiserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: elastiserve
{{- end -}}

{{- define "elastiserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "elastiserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "elastiserve.operatorSelectorLabels" -}}
{{ include "elastiserve.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "elastiserve.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "elastiserve.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag or repository@digest; the tag defaults to the chart's appVersion. */}}
{{- define "elastiserve.image" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Cluster-wide when no namespace is listed. */}}
{{- define "elastiserve.clusterWide" -}}
{{- if not .Values.watchNamespaces -}}true{{- end -}}
{{- end -}}

{{/*
Namespaced permissions: the same rules in a ClusterRole (cluster-wide) or in each Role. They
are operator/elastiserve_operator/rbac/operator-clusterrole.yaml's namespaced rules, verb for
verb (tests/chart/test_render.py compares them): children are created and updated by
server-side apply and removed by garbage collection through owner references, so no delete.
*/}}
{{- define "elastiserve.namespacedRules" -}}
- apiGroups: ["elastiserve.io"]
  resources: ["elasticmodels"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["elastiserve.io"]
  resources: ["elasticmodels/status"]
  verbs: ["get", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
# The joint replica policy's count, through the serving Deployment's scale subresource.
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["services", "configmaps", "serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Each model's inference key Secret: created once, never read, listed or changed (a 409 says
# it exists), so the operator can read no Secret of anyone's, its own included.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
# Serving pods: one watch per namespace keeps their start times and nodes (shared_pods).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
