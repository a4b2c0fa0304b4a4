"""Validates every manifest file under a directory against pinned schemas, one line per file.

Built-in kinds go through kubernetes-validate (strict: unknown fields are errors) for the
Kubernetes version given; custom resources through the openAPIV3Schema of their CRD,
vendored in scripts/manifests/schemas/ (KEDA's, for ScaledObject and TriggerAuthentication),
made strict the same way and with `metadata` checked as Kubernetes' own ObjectMeta. A kind
with no schema is an error, not a warning. Each kustomization is rendered (kustomize_lite,
and the installed kustomize too when there is one, and the two must agree) and its output
validated as a whole; each patch file must be a delete patch its kustomization uses.

Usage: validate_schemas.py --kubernetes-version 1.33.0 [--expect-failures] DIR
(--expect-failures: every file must be refused; for the fixtures in bad-schema/.)
"""

import argparse
import copy
import glob
import os
import sys

import jsonschema
import kubernetes_validate
import referencing
import yaml
from kubernetes_validate import utils as kv_utils

import kustomize_lite

HERE = os.path.dirname(os.path.abspath(__file__))
CRD_DIR = os.path.join(HERE, "schemas")
OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def strict(schema):
    """A copy of an OpenAPI v3 schema where every object with listed properties refuses others
    (the API server's strict field validation), except where the CRD keeps unknown fields."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


class CrdSchemas:
    """The vendored CRDs' schemas, by (apiVersion, kind)."""

    def __init__(self, kubernetes_version):
        self.schemas = {}
        self.sources = {}
        for path in sorted(glob.glob(os.path.join(CRD_DIR, "*", "*.yaml"))):
            for crd in kustomize_lite.load_documents(path):
                group = crd["spec"]["group"]
                kind = crd["spec"]["names"]["kind"]
                for version in crd["spec"]["versions"]:
                    schema = strict(version["schema"]["openAPIV3Schema"])
                    api_version = f"{group}/{version['name']}"
                    schema["properties"]["apiVersion"] = {"type": "string", "enum": [api_version]}
                    schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
                    schema["properties"]["metadata"] = {"$ref": OBJECT_META}
                    schema.setdefault("required", [])
                    schema["required"] = sorted(set(schema["required"]) | {"apiVersion", "kind", "metadata"})
                    self.schemas[(api_version, kind)] = schema
                    self.sources[(api_version, kind)] = os.path.relpath(path, HERE)
        # Kubernetes' own ObjectMeta (strict), from kubernetes-validate's schemas of this version.
        definitions = kv_utils.schema_contents(
            f"kubernetes-json-schema/v{self._schema_version(kubernetes_version)}-local-strict/_definitions.json",
            kubernetes_version,
        )
        self.registry = referencing.Resource.from_contents(definitions) @ referencing.Registry()

    @staticmethod
    def _schema_version(kubernetes_version):
        wanted = kv_utils.major_minor(kubernetes_version)
        return [v for v in kv_utils.all_versions() if kv_utils.major_minor(v) <= wanted][-1]

    def knows(self, doc):
        return (doc.get("apiVersion"), doc.get("kind")) in self.schemas

    def validate(self, doc):
        schema = self.schemas[(doc.get("apiVersion"), doc.get("kind"))]
        validator = jsonschema.Draft202012Validator(schema, registry=self.registry)
        return [
            f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
        ]


def describe(doc):
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def validate_doc(doc, kubernetes_version, crds):
    """Errors of one document ([] when it validates), and what it was validated against."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return ["not a Kubernetes object (no apiVersion/kind)"], None
    if crds.knows(doc):
        return crds.validate(doc), "CRD " + crds.sources[(doc["apiVersion"], doc["kind"])]
    try:
        version = kubernetes_validate.validate(doc, kubernetes_version, strict=True)
        return [], f"Kubernetes {version}"
    except kv_utils.ValidationError as e:
        path = ".".join(map(str, e.path)) or "(root)"
        return [f"{path}: {e.message}"], f"Kubernetes {e.version}"
    except kv_utils.SchemaNotFoundError as e:
        return [f"no schema: {e.message}"], None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", required=True)
    parser.add_argument("--expect-failures", action="store_true")
    parser.add_argument("directory")
    args = parser.parse_args()

    crds = CrdSchemas(args.kubernetes_version)
    root = args.directory.rstrip("/")
    files = sorted(glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True))
    kustomization_dirs = sorted({os.path.dirname(f) for f in files if os.path.basename(f) == "kustomization.yaml"})
    patches = {p for d in kustomization_dirs for p in kustomize_lite.patch_files(d)}
    kustomize = kustomize_lite.kustomize_command()
    failures = 0

    def report(ok, path, detail):
        nonlocal failures
        if args.expect_failures:
            ok, detail = not ok, (f"refused as expected: {detail}" if not ok else "accepted, but must be refused")
        failures += 0 if ok else 1
        print(f"{'ok  ' if ok else 'FAIL'} {path}: {detail}")

    for path in files:
        if os.path.basename(path) == "kustomization.yaml":
            directory = os.path.dirname(path)
            try:
                rendered = [doc for _, doc in kustomize_lite.render(directory)]
            except (kustomize_lite.RenderError, OSError, yaml.YAMLError) as e:
                report(False, path, str(e))
                continue
            errors = []
            for doc in rendered:
                problems, _ = validate_doc(doc, args.kubernetes_version, crds)
                errors += [f"{describe(doc)}: {p}" for p in problems]
            if kustomize is not None:
                try:
                    errors += kustomize_lite.differences(rendered, kustomize_lite.render_with_kustomize(kustomize, directory))
                    agreement = f"{' '.join(kustomize)} renders the same"
                except kustomize_lite.RenderError as e:
                    errors.append(str(e))
            else:
                agreement = "kustomize not installed: rendered by kustomize_lite only"
            report(not errors, path, "; ".join(errors) if errors else f"renders {len(rendered)} resources, all valid; {agreement}")
            continue
        try:
            docs = kustomize_lite.load_documents(path)
        except (OSError, yaml.YAMLError) as e:
            report(False, path, f"unreadable YAML: {e}")
            continue
        if path in patches:
            ok = all(doc.get("$patch") == "delete" and "kind" in doc for doc in docs)
            report(ok, path, "delete patch used by its kustomization" if ok else "not a delete patch")
            continue
        if not docs:
            report(False, path, "no documents")
            continue
        errors, against = [], set()
        for doc in docs:
            problems, schema = validate_doc(doc, args.kubernetes_version, crds)
            errors += [f"{describe(doc)}: {p}" for p in problems]
            if schema:
                against.add(schema)
        detail = "; ".join(errors) if errors else (
            f"{', '.join(describe(d) for d in docs)} valid against {', '.join(sorted(against))} (strict)"
        )
        report(not errors, path, detail)

    print(f"schemas{' (bad fixtures)' if args.expect_failures else ''}: {len(files)} files, {failures} failed")
    return 1 if failures or not files else 0


if __name__ == "__main__":
    sys.exit(main())
