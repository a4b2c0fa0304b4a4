#!/usr/bin/env bash
# Validates deploy/kubernetes: every manifest file and every kustomization's rendered output
# against the schemas of a pinned Kubernetes version (kubernetes-validate, strict) and the
# vendored KEDA CRD schemas (ScaledObject, TriggerAuthentication); then the deployment
# rules (scripts/manifests/check_rules.py). Both checks are also shown to refuse bad
# manifests (scripts/manifests/bad-schema/, scripts/manifests/bad/), so neither can pass
# vacuously. Last, the Redis and registry settings of the manifests run against the real
# redis-server and docker-registry on loopback (scripts/manifests/check_components.py;
# skipped when they are missing, failed instead with SOPM_REQUIRE_INTEGRATION=1).
# One line per file or check; exits non-zero on any failure.
# Usage: scripts/validate-manifests.sh (env: SOPM_KUBERNETES_VERSION, default 1.33.0).
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1
cd "$(dirname "$0")/.."
root=$PWD

KUBERNETES_VERSION=${SOPM_KUBERNETES_VERSION:-1.33.0}
requirements=scripts/manifests/requirements.txt

step() { printf '\n==> %s\n' "$*"; }

# kubernetes-validate and its dependencies from PyPI, pinned, in a venv under the target dir.
target_dir=${CARGO_TARGET_DIR:-$root/target}
venv=$target_dir/manifests-venv
stamp=$venv/.requirements.sha256
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  step "installing $(grep -m1 '^kubernetes-validate==' "$requirements") in $venv"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-venv
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$requirements"
  "$venv/bin/pip" check >/dev/null
  echo "$want" >"$stamp"
fi
py=$venv/bin/python
manifests=scripts/manifests

status=0
run() { "$@" || status=1; }

if command -v kubectl >/dev/null 2>&1 || command -v kustomize >/dev/null 2>&1; then
  kustomize_note="rendered outputs are compared with the installed kustomize"
else
  kustomize_note="kustomize is not installed: kustomizations are rendered by scripts/manifests/kustomize_lite.py only"
fi

step "schemas: deploy/kubernetes against Kubernetes $KUBERNETES_VERSION (strict) and KEDA's CRDs; $kustomize_note"
run "$py" "$manifests/validate_schemas.py" --kubernetes-version "$KUBERNETES_VERSION" deploy/kubernetes

step "schemas self-test: every file in $manifests/bad-schema must be refused"
run "$py" "$manifests/validate_schemas.py" --kubernetes-version "$KUBERNETES_VERSION" --expect-failures "$manifests/bad-schema"

step "rules: the rendered base, the KEDA overlay and the top-level kustomization"
run "$py" "$manifests/check_rules.py" deploy/kubernetes/base deploy/kubernetes/overlays/keda deploy/kubernetes

step "rules self-test: the bad fixtures are schema-valid, and each is refused by exactly the rule it names"
run "$py" "$manifests/validate_schemas.py" --kubernetes-version "$KUBERNETES_VERSION" "$manifests/bad"
run "$py" "$manifests/check_rules.py" --self-test

step "components: the manifests' Redis and registry settings against redis-server and docker-registry on loopback"
run "$py" "$manifests/check_components.py" deploy/kubernetes/base

if [ "$status" -ne 0 ]; then
  echo "validate-manifests: FAILED" >&2
else
  echo "validate-manifests: every manifest valid, every rule kept, every bad fixture refused"
fi
exit "$status"
