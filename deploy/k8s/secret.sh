#!/usr/bin/env bash
# Prints the Secret `pushgate` that deploy/k8s/pushgate.yaml reads, with a fresh random JWT
# secret (HS256) and API key each run. Nothing here is a key: they are generated now.
#   deploy/k8s/secret.sh | kubectl apply -f -
# Your backends sign client tokens with jwt-secret and call the API with api-key:
#   kubectl get secret pushgate -o jsonpath='{.data.api-key}' | base64 -d
# With RS256/ES256 instead, put the public key in a Secret and pass --jwt-public-key.
set -euo pipefail
key() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
cat <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: pushgate
  labels: {app.kubernetes.io/name: pushgate}
type: Opaque
stringData:
  jwt-secret: "$(key)"
  api-key: "$(key)"
YAML
