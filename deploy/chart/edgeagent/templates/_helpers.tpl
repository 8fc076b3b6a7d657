{{/* Common labels. */}}
{{- define "edgeagent.labels" -}}
app.kubernetes.io/part-of: edgeagent
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{- define "edgeagent.tlsSecret" -}}
{{- .Values.keylime.tls.existingSecret | default "edgeagent-keylime-tls" -}}
{{- end }}

{{- define "edgeagent.verifierURL" -}}
{{- .Values.controller.verifierURL | default (printf "https://keylime-verifier.%s.svc:%v" .Release.Namespace .Values.keylime.verifier.port) -}}
{{- end }}

{{- define "edgeagent.registrarURL" -}}
{{- .Values.controller.registrarURL | default (printf "https://keylime-registrar.%s.svc:%v" .Release.Namespace .Values.keylime.registrar.tlsPort) -}}
{{- end }}

{{- define "edgeagent.webhookURL" -}}
{{- .Values.keylime.webhookURL | default (printf "https://edgeagent-attestation-webhook.%s.svc:%v/revocation" .Release.Namespace .Values.controller.webhookPort) -}}
{{- end }}

{{/* Pod-level settings every pod of the chart shares: non-root, no privilege, the runtime's seccomp profile;
the node's network when .hostNetwork (a dict: the controller and Keylime may differ). */}}
{{- define "edgeagent.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  seccompProfile:
    type: RuntimeDefault
{{- if .hostNetwork }}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- end }}

{{/* "true" when the Keylime pods share the node's network: keylime.hostNetwork, or hostNetwork when unset. */}}
{{- define "edgeagent.keylimeHostNetwork" -}}
{{- if kindIs "invalid" .Values.keylime.hostNetwork }}{{ .Values.hostNetwork }}{{ else }}{{ .Values.keylime.hostNetwork }}{{ end -}}
{{- end }}

{{- define "edgeagent.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end }}
