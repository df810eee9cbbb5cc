{{/* Name of the chart, at most 63 characters. */}}
{{- define "internvl-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects: the release name, prefixed with the chart's unless it holds it. */}}
{{- define "internvl-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "internvl-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "internvl-operator.labels" -}}
helm.sh/chart: {{ include "internvl-operator.chart" . }}
{{ include "internvl-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: internvl-finetune
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the operator's pod. */}}
{{- define "internvl-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "internvl-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "internvl-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "internvl-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "internvl-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The operator's permissions, exactly OPERATOR_PERMISSIONS of operator/internvl_operator/permissions.py
(a test compares them): the same rules for the ClusterRole and for each namespace's Role.
*/}}
{{- define "internvl-operator.rules" -}}
- apiGroups: ["internvl.dev"]
  resources: ["internvlfinetunes"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["internvl.dev"]
  resources: ["internvlfinetunes/status"]
  verbs: ["get", "patch"]
- apiGroups: ["kubeflow.org"]
  resources: ["pytorchjobs", "mpijobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["trainer.kubeflow.org"]
  resources: ["trainjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["configmaps", "serviceaccounts"]
  verbs: ["get", "create"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# Optional: the message of the Kueue Workload that holds a queued job.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list"]
{{- end }}
