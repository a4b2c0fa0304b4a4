"""Renders a kustomization the way `kubectl kustomize` does, for the subset deploy/kubernetes uses.

Only `resources` (files and directories) and `patches` whose document is a `$patch: delete`
are understood; any other kustomize field is refused, so this can never silently render
something different from kustomize. When kustomize is installed, validate-manifests.sh
compares the two renders document by document.
"""

import os
import shutil
import subprocess

import yaml

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KNOWN_FIELDS = {"apiVersion", "kind", "resources", "patches"}


class RenderError(Exception):
    """A kustomization this renderer cannot render faithfully, or a broken one."""


def load_documents(path):
    """The non-empty YAML documents of one file, in order."""
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def identity(doc):
    """(apiVersion group, kind, namespace, name): what kustomize matches documents by."""
    api_version = doc.get("apiVersion", "")
    group = api_version.split("/")[0] if "/" in api_version else ""
    meta = doc.get("metadata") or {}
    return (group, doc.get("kind"), meta.get("namespace"), meta.get("name"))


def find_kustomization(directory):
    """The kustomization file of a directory, or None."""
    for name in KUSTOMIZATION_NAMES:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def patch_files(directory):
    """The patch files a kustomization names (paths relative to the repository root)."""
    kustomization = find_kustomization(directory)
    if kustomization is None:
        return []
    spec = load_documents(kustomization)[0]
    return [os.path.normpath(os.path.join(directory, p["path"])) for p in spec.get("patches") or []]


def render(directory, _seen=None):
    """The documents a kustomization directory renders to, as (source file, document) pairs."""
    seen = set() if _seen is None else _seen
    real = os.path.realpath(directory)
    if real in seen:
        raise RenderError(f"{directory}: kustomization cycle")
    seen.add(real)
    kustomization = find_kustomization(directory)
    if kustomization is None:
        raise RenderError(f"{directory}: no kustomization.yaml")
    docs = load_documents(kustomization)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise RenderError(f"{kustomization}: expected one mapping")
    spec = docs[0]
    unknown = set(spec) - KNOWN_FIELDS
    if unknown:
        raise RenderError(f"{kustomization}: fields this renderer does not implement: {sorted(unknown)}")
    if spec.get("kind", "Kustomization") != "Kustomization":
        raise RenderError(f"{kustomization}: kind must be Kustomization")

    out = []
    for entry in spec.get("resources") or []:
        path = os.path.normpath(os.path.join(directory, entry))
        if os.path.isdir(path):
            out.extend(render(path, seen))
        elif os.path.isfile(path):
            out.extend((path, doc) for doc in load_documents(path))
        else:
            raise RenderError(f"{kustomization}: resource {entry} does not exist")

    ids = [identity(doc) for _, doc in out]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise RenderError(f"{kustomization}: the same resource twice: {sorted(map(str, duplicates))}")

    for entry in spec.get("patches") or []:
        if set(entry) != {"path"}:
            raise RenderError(f"{kustomization}: only `patches: - path:` entries are implemented")
        path = os.path.normpath(os.path.join(directory, entry["path"]))
        for patch in load_documents(path):
            if patch.get("$patch") != "delete":
                raise RenderError(f"{path}: only `$patch: delete` patches are implemented")
            target = identity(patch)
            before = len(out)
            out = [(src, doc) for src, doc in out if identity(doc) != target]
            if len(out) == before:
                raise RenderError(f"{path}: deletes {target}, which the resources do not have")
    seen.discard(real)
    return out


def kustomize_command():
    """The argv prefix of an installed kustomize (`kubectl kustomize` or `kustomize build`), or None."""
    if shutil.which("kubectl"):
        probe = subprocess.run(["kubectl", "kustomize", "--help"], capture_output=True)
        if probe.returncode == 0:
            return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def render_with_kustomize(command, directory):
    """The documents the installed kustomize renders for a directory."""
    result = subprocess.run(command + [directory], capture_output=True, text=True)
    if result.returncode != 0:
        raise RenderError(f"{' '.join(command)} {directory} failed: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def differences(ours, theirs):
    """What differs between two renders (lists of documents), matched by identity; [] when equal."""
    mine = {identity(doc): doc for doc in ours}
    other = {identity(doc): doc for doc in theirs}
    problems = []
    for key in sorted(set(mine) | set(other), key=str):
        if key not in other:
            problems.append(f"{key} only in this renderer's output")
        elif key not in mine:
            problems.append(f"{key} only in kustomize's output")
        elif mine[key] != other[key]:
            problems.append(f"{key} differs")
    return problems
