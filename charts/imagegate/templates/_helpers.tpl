{{/*
Names, labels and the settings several templates share.
*/}}

{{- define "imagegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-imagegate, or the release name when it already contains the chart name.
Kept to 52 characters so suffixed names (-serving, -selfsigned, -tls, -test) stay within 63.
*/}}
{{- define "imagegate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "imagegate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "imagegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imagegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "imagegate.labels" -}}
helm.sh/chart: {{ include "imagegate.chart" . }}
{{ include "imagegate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: imagegate
{{- end }}

{{- define "imagegate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "imagegate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the serving certificate (operator-generated or cert-manager's). */}}
{{- define "imagegate.tlsSecretName" -}}
{{- printf "%s-tls" (include "imagegate.fullname" .) }}
{{- end }}

{{- define "imagegate.servingCertificateName" -}}
{{- printf "%s-serving" (include "imagegate.fullname" .) }}
{{- end }}

{{/*
How the webhook's certificate is managed: "url" (imagegate runs elsewhere, webhook.url and
webhook.caBundle given), "certManager", or "generate" (the operator creates a CA and serving
certificate, keeps them in a Secret and patches the CA into the webhook configurations).
Also validates the combinations, so every template fails with the same clear message.
*/}}
{{- define "imagegate.certMode" -}}
{{- if .Values.webhook.url }}
{{- if .Values.certManager.enabled }}
{{- fail "webhook.url and certManager.enabled exclude each other: in url mode imagegate runs outside the cluster and its certificate is yours (give its CA as webhook.caBundle)" }}
{{- end }}
{{- if not .Values.webhook.caBundle }}
{{- fail "webhook.url needs webhook.caBundle: the base64-encoded PEM CA that signed the certificate served at webhook.url" }}
{{- end }}
{{- if not (hasPrefix "https://" .Values.webhook.url) }}
{{- fail (printf "webhook.url must start with https:// (got %q)" .Values.webhook.url) }}
{{- end }}
{{- print "url" }}
{{- else if .Values.certManager.enabled }}
{{- print "certManager" }}
{{- else }}
{{- print "generate" }}
{{- end }}
{{- end }}

{{/* Operator image: repository@digest when a digest is set, else repository:tag. */}}
{{- define "imagegate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
imagegate's verification deadline: two seconds below the webhook timeout, so imagegate denies
with a reason before the API server gives up on it and applies failurePolicy.
*/}}
{{- define "imagegate.deadline" -}}
{{- $timeout := int .Values.webhook.timeoutSeconds }}
{{- if lt $timeout 3 }}
{{- fail (printf "webhook.timeoutSeconds must be at least 3 (got %d): imagegate's deadline is rendered as timeoutSeconds - 2" $timeout) }}
{{- end }}
{{- sub $timeout 2 }}
{{- end }}

{{/* The in-cluster Service's DNS name. */}}
{{- define "imagegate.serviceHost" -}}
{{- printf "%s.%s.svc" (include "imagegate.fullname" .) .Release.Namespace }}
{{- end }}

{{/*
Webhook rules: the same resources as WORKLOAD_RESOURCES in operator/imagegate/webhookconfig.py
(tests/integration/test_chart.py compares them).
*/}}
{{- define "imagegate.webhookRules" -}}
- apiGroups: [""]
  apiVersions: ["v1"]
  operations: ["CREATE", "UPDATE"]
  resources: ["pods", "pods/ephemeralcontainers", "replicationcontrollers", "podtemplates"]
  scope: Namespaced
- apiGroups: ["apps"]
  apiVersions: ["v1"]
  operations: ["CREATE", "UPDATE"]
  resources: ["deployments", "statefulsets", "daemonsets", "replicasets"]
  scope: Namespaced
- apiGroups: ["batch"]
  apiVersions: ["v1"]
  operations: ["CREATE", "UPDATE"]
  resources: ["jobs", "cronjobs"]
  scope: Namespaced
{{- end }}

{{/*
Policy webhook rules: imagegate's own resources, as policy_rules() in webhookconfig.py builds them.
*/}}
{{- define "imagegate.policyRules" -}}
- apiGroups: ["imagegate.dev"]
  apiVersions: ["*"]
  operations: ["CREATE", "UPDATE"]
  resources: ["clusterimagepolicies"]
  scope: Cluster
- apiGroups: ["imagegate.dev"]
  apiVersions: ["*"]
  operations: ["CREATE", "UPDATE"]
  resources: ["imagepolicies"]
  scope: Namespaced
{{- end }}

{{/*
Namespaces the webhooks see: never the control plane's or imagegate's own (so imagegate can
always restart), never one labelled imagegate.dev/ignore, plus the user's extra selection.
*/}}
{{- define "imagegate.namespaceSelector" -}}
{{- $excluded := list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace }}
{{- range .Values.webhook.excludeNamespaces }}
{{- if not (has . $excluded) }}
{{- $excluded = append $excluded . }}
{{- end }}
{{- end }}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values:
      {{- toYaml $excluded | nindent 6 }}
  - key: imagegate.dev/ignore
    operator: DoesNotExist
  {{- with .Values.webhook.namespaceSelector.matchExpressions }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .Values.webhook.namespaceSelector.matchLabels }}
matchLabels:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The webhook's clientConfig. Call with (dict "ctx" $ "path" "mutate" "kind" "MutatingWebhookConfiguration").
In the default mode the caBundle the operator patched in is read back with `lookup`, so
`helm upgrade` does not blank it (empty on first install and under `helm template`).
*/}}
{{- define "imagegate.clientConfig" -}}
{{- $ctx := .ctx }}
{{- $mode := include "imagegate.certMode" $ctx }}
{{- if eq $mode "url" }}
url: {{ printf "%s/%s" (trimSuffix "/" $ctx.Values.webhook.url) .path | quote }}
caBundle: {{ $ctx.Values.webhook.caBundle | quote }}
{{- else }}
service:
  name: {{ include "imagegate.fullname" $ctx }}
  namespace: {{ $ctx.Release.Namespace }}
  path: {{ printf "/%s" .path | quote }}
  port: 443
{{- if eq $mode "generate" }}
{{- $caBundle := "" }}
{{- $existing := lookup "admissionregistration.k8s.io/v1" .kind "" (include "imagegate.fullname" $ctx) }}
{{- range (dig "webhooks" (list) $existing) }}
{{- if eq (dig "name" "" .) (printf "%s.imagegate.dev" $.path) }}
{{- $caBundle = dig "clientConfig" "caBundle" "" . }}
{{- end }}
{{- end }}
{{- with $caBundle }}
caBundle: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The hardened container securityContext shared by the operator and the test pod. */}}
{{- define "imagegate.containerSecurityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end }}

{{- define "imagegate.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{/*
Webhook serving processes (`--workers`): .Values.workers, else the CPU request rounded up
(docs/design.md §13), at least 1.
*/}}
{{- define "imagegate.workers" -}}
{{- if .Values.workers }}
{{- int .Values.workers }}
{{- else }}
{{- $cpu := toString (dig "requests" "cpu" "1" (.Values.resources | default dict)) }}
{{- if hasSuffix "m" $cpu }}
{{- max 1 (div (add (int (trimSuffix "m" $cpu)) 999) 1000) }}
{{- else }}
{{- max 1 (int (ceil (float64 $cpu))) }}
{{- end }}
{{- end }}
{{- end }}
