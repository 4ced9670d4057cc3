{{/*
Names: the release's full name ("dfly" for a release called dfly or
dfly-anything containing the chart name), truncated to 63 characters.
*/}}
{{- define "dfly.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The image, tag defaulting to the chart's appVersion; "latest" is refused. */}}
{{- define "dfly.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString -}}
{{- if eq $tag "latest" -}}
{{- fail "image.tag must name a version, not \"latest\"" -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{/* Labels of every object: pass (dict "ctx" $ "component" NAME). */}}
{{- define "dfly.labels" -}}
app.kubernetes.io/name: dfly
app.kubernetes.io/part-of: dfly
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels: pass (dict "ctx" $ "component" NAME). */}}
{{- define "dfly.selectorLabels" -}}
app.kubernetes.io/name: dfly
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The admin token Secret's name. */}}
{{- define "dfly.adminTokenSecret" -}}
{{- .Values.adminToken.existingSecret | default (printf "%s-admin-token" (include "dfly.fullname" .)) -}}
{{- end -}}

{{/* The supernode's gRPC address as peers dial it. */}}
{{- define "dfly.supernodeAddr" -}}
{{- printf "%s-supernode.%s.svc:8002" (include "dfly.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* TLS flags (container args), when tls.secretName is set. */}}
{{- define "dfly.tlsArgs" -}}
{{- if .Values.tls.secretName }}
- --tls-ca=/etc/dfly/tls/ca.crt
- --tls-cert=/etc/dfly/tls/tls.crt
- --tls-key=/etc/dfly/tls/tls.key
{{- if .Values.tls.clientAuth }}
- --tls-client-auth
{{- end }}
{{- end }}
{{- end -}}

{{/* TLS volume mount and volume. */}}
{{- define "dfly.tlsMount" -}}
{{- if .Values.tls.secretName }}
- name: tls
  mountPath: /etc/dfly/tls
  readOnly: true
{{- end }}
{{- end -}}
{{- define "dfly.tlsVolume" -}}
{{- if .Values.tls.secretName }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* Locality flags of a node group: pass the group. */}}
{{- define "dfly.localityArgs" -}}
{{- with .idc }}
- --idc={{ . }}
{{- end }}
{{- with .rack }}
- --rack={{ . }}
{{- end }}
{{- end -}}

{{/* Name suffix of a node group: "" for the group "default". */}}
{{- define "dfly.groupSuffix" -}}
{{- if ne .name "default" }}-{{ .name }}{{ end -}}
{{- end -}}
