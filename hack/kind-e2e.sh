#!/usr/bin/env bash
# End-to-end on a throwaway kind cluster: the Kubeflow training operator, the images built and
# loaded, the operator installed with Helm, then the e2e suite against it (E2E_OPERATOR=installed).
# Needs docker, kind, kubectl and helm on PATH; run from anywhere: `hack/kind-e2e.sh`.
set -euo pipefail

cd "$(dirname "$0")/.."
CLUSTER="${KIND_CLUSTER:-internvl-e2e}"
TRAINING_OPERATOR_REF="${TRAINING_OPERATOR_REF:-v1.9.4}"
IMAGE_TAG="e2e"

cleanup() {
  if [[ "${KEEP_CLUSTER:-}" != "1" ]]; then
    kind delete cluster --name "${CLUSTER}"
  fi
}

kind create cluster --name "${CLUSTER}" --wait 120s
trap cleanup EXIT

kubectl apply --server-side -k "github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=${TRAINING_OPERATOR_REF}"
kubectl -n kubeflow rollout status deployment/training-operator --timeout=300s

docker build -f images/operator/Dockerfile -t "internvl-operator:${IMAGE_TAG}" .
kind load docker-image --name "${CLUSTER}" "internvl-operator:${IMAGE_TAG}"

helm upgrade --install internvl-operator charts/internvl-operator \
  --namespace internvl-system --create-namespace \
  --set image.repository=internvl-operator --set image.tag="${IMAGE_TAG}" \
  --set watchNamespaces=null \
  --wait --timeout 300s

make install
E2E_OPERATOR=installed .venv/bin/python -m pytest tests/e2e -m e2e -v
