{{- define "pingvasCluster.labels" -}}
app.kubernetes.io/name: pingvas-cluster
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: pingvas
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
