{{/* The chart name, or nameOverride. */}}
{{- define "modelops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name: fullnameOverride, or the release name with the chart name unless it already holds it. */}}
{{- define "modelops.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "modelops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "modelops.labels" -}}
helm.sh/chart: {{ include "modelops.chart" . }}
{{ include "modelops.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: modelops
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "modelops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modelops.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}; the tag defaults to the appVersion. Call with (list .Values.x.image .Chart.AppVersion). */}}
{{- define "modelops.image" -}}
{{- $image := index . 0 }}
{{- $ref := printf "%s:%s" $image.repository (default (index . 1) $image.tag) }}
{{- if $image.digest }}
{{- $ref = printf "%s@%s" $ref $image.digest }}
{{- end }}
{{- $ref }}
{{- end }}

{{/*
What the operator needs in each namespace it watches (docs/api.md, "RBAC the operator needs").
Nothing is deleted: children are owned by the custom resources and garbage-collected.
*/}}
{{- define "modelops.namespacedRules" -}}
- apiGroups: ["modelops.dev"]
  resources: ["models", "modelversions", "modeldeployments"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["modelops.dev"]
  resources: ["models/status", "modelversions/status", "modeldeployments/status"]
  verbs: ["get", "patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Named Secrets only (a Model's credentialsSecret, or its caBundle.secretRef): get, never list or watch.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# A Model's caBundle.configMapRef.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "create", "patch"]
{{- end }}

{{/* What kopf needs cluster-wide to discover the API and the namespaces, whatever it watches. */}}
{{- define "modelops.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}

{{/* With nodeCache.enabled: the cache's local volume for each serving namespace (cluster-scoped). */}}
{{- define "modelops.nodeCacheClusterRules" -}}
- apiGroups: [""]
  resources: ["persistentvolumes"]
  verbs: ["get", "create", "patch"]
{{- end }}

{{/* With nodeCache.enabled: the claim on it in each serving namespace. */}}
{{- define "modelops.nodeCacheRules" -}}
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "create", "patch"]
{{- end }}

{{/* Leader election: the Lease in the release namespace (create cannot be narrowed to one name). */}}
{{- define "modelops.leaderElectionRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end }}

{{/* The Secret with the operator's signing key (key.pem). */}}
{{- define "modelops.signingSecretName" -}}
{{- default (printf "%s-signing-key" (include "modelops.fullname" .)) .Values.signing.existingSecret }}
{{- end }}
