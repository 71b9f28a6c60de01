"""Derives the vendored KServe schemas from KServe's CRDs: each kind's openAPIV3Schema, cut to the fields used.

    python deploy/kserve/schema/derive.py --commit SHA CRD.yaml [CRD.yaml ...]

CRD.yaml: KServe's config/crd/full/serving.kserve.io_{servingruntimes,clusterservingruntimes,
inferenceservices}.yaml at commit SHA. For each kind that deploy/kserve/*.yaml uses, writes <kind>.json
beside this file: the CRD's schema for the fields those manifests set (with every constraint KServe gives
them: types, enums, required fields, formats, patterns), the rest of KServe's fields left out, and an object
that lists its properties rejecting any other key, so a misspelt field fails the check. A field added to a
manifest later fails it too, until this is run again (deploy/check.py says so). Descriptions are dropped.
Run offline, not in CI: CI has no KServe checkout (only PyPI is reachable), hence the vendored result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
MANIFESTS = HERE.parent  # deploy/kserve: every *.yaml there is checked against these schemas
DROPPED_KEYS = {"description"}  # prose only; every constraint stays


def crd_schema(crd: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """The CRD's kind, apiVersion and openAPIV3Schema (of its storage version)."""
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    versions = crd["spec"]["versions"]
    version = next((v for v in versions if v.get("storage")), versions[0])
    return kind, f"{group}/{version['name']}", version["schema"]["openAPIV3Schema"]


def prune(schema: dict[str, Any], values: list[Any], path: str) -> dict[str, Any]:
    """schema cut to what values (the manifests' values at path) use; raises KeyError for a field KServe lacks."""
    kept = {key: value for key, value in schema.items()
            if key not in DROPPED_KEYS and key not in ("properties", "items")}
    dicts = [v for v in values if isinstance(v, dict)]
    if "properties" in schema and dicts:
        used = sorted({key for d in dicts for key in d})
        unknown = [key for key in used if key not in schema["properties"]]
        if unknown and not schema.get("x-kubernetes-preserve-unknown-fields"):
            raise KeyError(f"{path}: {', '.join(unknown)} not in KServe's schema")
        kept["properties"] = {key: prune(schema["properties"][key], [d[key] for d in dicts if key in d],
                                         f"{path}.{key}")
                              for key in used if key in schema["properties"]}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            kept["additionalProperties"] = False
    elif "properties" in schema:
        kept["properties"] = {}
    if "items" in schema:
        elements = [item for v in values if isinstance(v, list) for item in v]
        kept["items"] = prune(schema["items"], elements, f"{path}[]")
    pruned: dict[str, Any] = _strip(kept)
    return pruned


def _strip(node: Any) -> Any:
    """Descriptions dropped at every depth (in kept subtrees such as additionalProperties and anyOf too)."""
    if isinstance(node, dict):
        return {key: _strip(value) for key, value in node.items() if key not in DROPPED_KEYS}
    if isinstance(node, list):
        return [_strip(value) for value in node]
    return node


def manifests_by_kind(folder: Path) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(folder.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                found.setdefault(document["kind"], []).append(document)
    return found


def derive(crd_paths: list[Path], commit: str) -> dict[str, dict[str, Any]]:
    """The schema of each kind the manifests use, keyed by kind."""
    manifests = manifests_by_kind(MANIFESTS)
    schemas: dict[str, dict[str, Any]] = {}
    for crd_path in crd_paths:
        kind, api_version, schema = crd_schema(yaml.safe_load(crd_path.read_text(encoding="utf-8")))
        if kind not in manifests:
            continue
        derived = prune(schema, manifests[kind], kind)
        # The API server, not the CRD's schema, holds apiVersion and kind to these: so does this check.
        derived["properties"]["apiVersion"] = {"const": api_version}
        derived["properties"]["kind"] = {"const": kind}
        derived["required"] = sorted({*derived.get("required", []), "apiVersion", "kind", "metadata", "spec"})
        schemas[kind] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$comment": f"Derived by deploy/kserve/schema/derive.py from kserve/kserve {commit}, "
                        f"config/crd/full/{crd_path.name}: its openAPIV3Schema cut to the fields "
                        "deploy/kserve/*.yaml use; other keys are rejected. Do not edit: derive again.",
            "title": f"{kind} ({api_version})",
            **derived,
        }
    missing = sorted(set(manifests) - set(schemas))
    if missing:
        raise SystemExit(f"no CRD given for {', '.join(missing)}")
    return schemas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commit", required=True, help="the kserve/kserve commit the CRDs come from")
    parser.add_argument("crds", nargs="+", type=Path, help="KServe CRD files (config/crd/full/*.yaml)")
    args = parser.parse_args(argv)
    try:
        schemas = derive(args.crds, args.commit)
    except KeyError as error:
        print(f"derive: {error.args[0]}", file=sys.stderr)
        return 1
    for kind, schema in schemas.items():
        path = HERE / f"{kind.lower()}.json"
        path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        print("wrote", path.relative_to(MANIFESTS.parent.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
