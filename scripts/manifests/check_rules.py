"""The deployment rules SOPM's manifests must keep, checked on rendered manifest sets.

Rules (ids as printed): no-cluster-rbac, no-wildcard, role-namespace, resources, probes,
run-as-non-root, no-privilege-escalation, drop-all, seccomp, image-pinned,
function-pod-netpol, pod-security-labels, token-automount, one-autoscaler,
scale-target-exists, scaledobject-bounds, keda-cpu-trigger. A schema cannot say any of
them. The last two repeat what KEDA's CRD (a CEL rule) and KEDA's admission webhook
(verifyCPUMemoryScalers) refuse, since neither runs here.

Usage:
  check_rules.py DIR|FILE...   check each kustomization directory (rendered) or file;
                               one line per set, non-zero exit on any violation
  check_rules.py --self-test   check each fixture in scripts/manifests/bad/ alone: it must
                               be refused by exactly the rule its `# expect: RULE` line names
"""

import glob
import os
import sys

import kustomize_lite

HERE = os.path.dirname(os.path.abspath(__file__))
FUNCTIONS_NAMESPACE = "sopm-functions"
FUNCTION_POD_LABEL = ("sopm.dev/function-pod", "true")
WORKER_LABEL = ("app.kubernetes.io/component", "worker")
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
PROBED_KINDS = {"Deployment", "StatefulSet"}


def name_of(doc):
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('namespace', '-')}/{meta.get('name')}"


def pod_spec(doc):
    """The pod spec of a workload, or None for other kinds."""
    kind = doc.get("kind")
    if kind not in WORKLOAD_KINDS:
        return None
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    return ((spec.get("template") or {}).get("spec")) or {}


def containers(spec):
    return (spec.get("initContainers") or []) + (spec.get("containers") or [])


def check_rbac(doc, fail):
    kind = doc.get("kind")
    if kind in ("ClusterRole", "ClusterRoleBinding"):
        fail("no-cluster-rbac", f"{name_of(doc)}: cluster-wide RBAC is not allowed")
    if kind in ("Role", "RoleBinding") and (doc.get("metadata") or {}).get("namespace") != FUNCTIONS_NAMESPACE:
        fail("role-namespace", f"{name_of(doc)}: RBAC only in the namespace {FUNCTIONS_NAMESPACE}")
    if kind in ("Role", "ClusterRole"):
        for i, rule in enumerate(doc.get("rules") or []):
            for field in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
                if any("*" in str(v) for v in rule.get(field) or []):
                    fail("no-wildcard", f"{name_of(doc)}: rules[{i}].{field} has a wildcard")


def check_pod(doc, spec, fail):
    who = name_of(doc)
    pod_sc = spec.get("securityContext") or {}
    for c in containers(spec):
        cname = f"{who} container {c.get('name')}"
        sc = c.get("securityContext") or {}
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            have = res.get(part) or {}
            for resource in ("cpu", "memory"):
                if resource not in have:
                    fail("resources", f"{cname}: no {part}.{resource}")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            fail("run-as-non-root", f"{cname}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            fail("run-as-non-root", f"{cname}: runAsUser 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail("no-privilege-escalation", f"{cname}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []) or caps.get("add"):
            fail("drop-all", f"{cname}: capabilities must drop ALL and add none")
        if sc.get("privileged"):
            fail("no-privilege-escalation", f"{cname}: privileged")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            fail("seccomp", f"{cname}: seccompProfile must be RuntimeDefault or Localhost")
        image = str(c.get("image") or "")
        last = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in last or last.endswith(":latest")):
            fail("image-pinned", f"{cname}: image {image!r} is not pinned to a tag or digest")
        if doc.get("kind") in PROBED_KINDS and c in (spec.get("containers") or []):
            for probe in ("livenessProbe", "readinessProbe"):
                if not c.get(probe):
                    fail("probes", f"{cname}: no {probe}")


def selects_function_pods(policy):
    selector = (policy.get("spec") or {}).get("podSelector") or {}
    labels = selector.get("matchLabels") or {}
    return labels.get(FUNCTION_POD_LABEL[0]) == FUNCTION_POD_LABEL[1]


def only_from_workers(policy):
    for rule in (policy.get("spec") or {}).get("ingress") or []:
        peers = rule.get("from") or []
        if not peers:
            return False
        for peer in peers:
            labels = (peer.get("podSelector") or {}).get("matchLabels") or {}
            if labels.get(WORKER_LABEL[0]) != WORKER_LABEL[1] or "ipBlock" in peer:
                return False
    return True


def check_keda_resource_triggers(scaled_object, docs, key, fail):
    """KEDA's webhook: a cpu/memory trigger needs that request on the target's containers,
    and cpu/memory triggers alone cannot scale to zero."""
    spec = scaled_object.get("spec") or {}
    triggers = spec.get("triggers") or []
    resource_triggers = [t for t in triggers if t.get("type") in ("cpu", "memory")]
    if not resource_triggers:
        return
    if len(resource_triggers) == len(triggers) and spec.get("minReplicaCount", 0) == 0:
        fail("keda-cpu-trigger", f"{name_of(scaled_object)}: only cpu/memory triggers with minReplicaCount 0 "
             "(KEDA refuses it: such a ScaledObject never scales to zero)")
    for target in docs:
        if (target.get("kind"), (target.get("metadata") or {}).get("name")) != key[1:] or pod_spec(target) is None:
            continue
        for trigger in resource_triggers:
            only = (trigger.get("metadata") or {}).get("containerName")
            for c in pod_spec(target).get("containers") or []:
                if only and c.get("name") != only:
                    continue
                if trigger["type"] not in ((c.get("resources") or {}).get("requests") or {}):
                    fail("keda-cpu-trigger", f"{name_of(scaled_object)}: {trigger['type']} trigger, but container "
                         f"{c.get('name')} of {name_of(target)} has no {trigger['type']} request")


def check_set(docs):
    """Every violation in one rendered set, as (rule, message) pairs."""
    problems = []

    def fail(rule, message):
        problems.append((rule, message))

    for doc in docs:
        check_rbac(doc, fail)
        spec = pod_spec(doc)
        if spec is not None:
            check_pod(doc, spec, fail)
        if doc.get("kind") == "Namespace":
            labels = (doc.get("metadata") or {}).get("labels") or {}
            for mode in ("enforce", "audit", "warn"):
                if labels.get(f"pod-security.kubernetes.io/{mode}") != "restricted":
                    fail("pod-security-labels", f"{name_of(doc)}: pod-security {mode} is not restricted")
                version = labels.get(f"pod-security.kubernetes.io/{mode}-version")
                if not version or version == "latest":
                    fail("pod-security-labels", f"{name_of(doc)}: pod-security {mode}-version is not pinned")

    # Function pods: a policy that names them, denies all egress, admits only workers.
    if any(d.get("kind") == "Namespace" and d["metadata"].get("name") == FUNCTIONS_NAMESPACE for d in docs):
        policies = [
            d for d in docs
            if d.get("kind") == "NetworkPolicy"
            and d["metadata"].get("namespace") == FUNCTIONS_NAMESPACE
            and selects_function_pods(d)
        ]
        good = [
            p for p in policies
            if {"Ingress", "Egress"} <= set(p["spec"].get("policyTypes") or [])
            and not p["spec"].get("egress")
            and only_from_workers(p)
        ]
        if not good:
            fail("function-pod-netpol", f"no NetworkPolicy in {FUNCTIONS_NAMESPACE} selects "
                 f"{FUNCTION_POD_LABEL[0]}={FUNCTION_POD_LABEL[1]}, denies all egress and admits only workers")
        allowing = [
            p for p in docs
            if p.get("kind") == "NetworkPolicy"
            and p["metadata"].get("namespace") == FUNCTIONS_NAMESPACE
            and p["spec"].get("egress")
        ]
        for p in allowing:
            fail("function-pod-netpol", f"{name_of(p)}: allows egress in {FUNCTIONS_NAMESPACE}")

    # A service account no RoleBinding grants anything mounts no token.
    bound = {
        (s.get("namespace"), s.get("name"))
        for d in docs if d.get("kind") == "RoleBinding"
        for s in d.get("subjects") or [] if s.get("kind") == "ServiceAccount"
    }
    for d in docs:
        if d.get("kind") == "ServiceAccount":
            key = (d["metadata"].get("namespace"), d["metadata"].get("name"))
            if key not in bound and d.get("automountServiceAccountToken") is not False:
                fail("token-automount", f"{name_of(d)}: has no RBAC, so automountServiceAccountToken must be false")

    # Autoscalers: one per target, the target present, KEDA's bounds (a CEL rule in its CRD).
    targets = {}
    for d in docs:
        kind = d.get("kind")
        if kind not in ("HorizontalPodAutoscaler", "ScaledObject"):
            continue
        ref = (d.get("spec") or {}).get("scaleTargetRef") or {}
        key = (d["metadata"].get("namespace"), ref.get("kind", "Deployment"), ref.get("name"))
        targets.setdefault(key, []).append(name_of(d))
        if not any(
            w.get("kind") == key[1] and w["metadata"].get("name") == key[2] and w["metadata"].get("namespace") == key[0]
            for w in docs
        ):
            fail("scale-target-exists", f"{name_of(d)}: scales {key[1]}/{key[2]}, which this set does not have")
        if kind == "ScaledObject":
            spec = d.get("spec") or {}
            low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
            if low > high:
                fail("scaledobject-bounds", f"{name_of(d)}: minReplicaCount {low} > maxReplicaCount {high}")
            check_keda_resource_triggers(d, docs, key, fail)
    for key, scalers in targets.items():
        if len(scalers) > 1:
            fail("one-autoscaler", f"{key[1]}/{key[2]} is scaled by {len(scalers)} autoscalers: "
                 f"{', '.join(scalers)} (KEDA creates its own HPA)")
    return problems


def load_set(path):
    if os.path.isdir(path):
        return [doc for _, doc in kustomize_lite.render(path)]
    return kustomize_lite.load_documents(path)


def expected_rule(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("# expect:"):
                return line.split(":", 1)[1].strip()
    return None


def self_test():
    fixtures = sorted(glob.glob(os.path.join(HERE, "bad", "*.yaml")))
    failures = 0
    for path in fixtures:
        rel = os.path.relpath(path)
        expected = expected_rule(path)
        found = {rule for rule, _ in check_set(load_set(path))}
        if expected and found == {expected}:
            print(f"ok   {rel}: refused by {expected}, as expected")
        else:
            failures += 1
            print(f"FAIL {rel}: expected refusal by exactly {expected!r}, got {sorted(found) or 'no refusal'}")
    print(f"rules self-test: {len(fixtures)} bad fixtures, {failures} not refused as expected")
    return 1 if failures or not fixtures else 0


def main(argv):
    if argv == ["--self-test"]:
        return self_test()
    if not argv or any(a.startswith("-") for a in argv):
        print(__doc__, file=sys.stderr)
        return 2
    failures = 0
    for path in argv:
        try:
            docs = load_set(path)
        except (kustomize_lite.RenderError, OSError) as e:
            failures += 1
            print(f"FAIL {path}: {e}")
            continue
        problems = check_set(docs)
        if problems:
            failures += 1
            print(f"FAIL {path}: {len(problems)} rule violations")
            for rule, message in problems:
                print(f"       {rule}: {message}")
        else:
            print(f"ok   {path}: {len(docs)} resources keep every rule")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
