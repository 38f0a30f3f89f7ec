"""Offline checks of the Helm chart (charts/glimpse3d) and the kustomize tree (deploy/kustomize).

- ``helm lint --strict`` and ``helm template`` for every values profile;
- every rendered manifest validated against the Kubernetes OpenAPI schemas of one pinned Kubernetes
  version (``kubernetes-validate``, strict: unknown fields are errors), and KEDA ScaledObjects and
  Prometheus ServiceMonitors against the published CRD schemas vendored in ``deploy/tools/crds``
  (made strict the same way);
- ``kubectl kustomize`` of each overlay, validated the same way;
- the committed kustomize base (``deploy/kustomize/base/glimpse3d.yaml``) compared with a fresh render.

    python deploy/tools/chart.py all --out out/chart   # everything above; renders land in out/chart
    python deploy/tools/chart.py base                  # re-render the committed kustomize base
    python deploy/tools/chart.py validate FILE...      # validate any manifest files

helm and kubectl come from ``deploy/tools/k8s_tools.py`` (``make k8s-tools``).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import functools
import logging
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import k8s_tools

log = logging.getLogger("chart")

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "glimpse3d"
PROFILE_DIR = CHART / "profiles"
KUSTOMIZE = REPO_ROOT / "deploy" / "kustomize"
# The base is the gpu-triton shape with external S3 and PostgreSQL, plus base/values.yaml (registry, tags).
BASE_VALUES = (CHART / "profiles" / "gpu-triton.yaml", CHART / "profiles" / "external.yaml",
               KUSTOMIZE / "base" / "values.yaml")
BASE_RENDER = KUSTOMIZE / "base" / "glimpse3d.yaml"
OVERLAYS = ("dev", "prod")
CRD_DIR = Path(__file__).resolve().parent / "crds"

RELEASE = "glimpse3d"
NAMESPACE = "glimpse3d"
# Rendered manifests are validated against this Kubernetes version's schemas (kubectl is 1.34 too).
KUBERNETES_VERSION = "1.34"

# Values profiles: name -> values files (relative to the chart), applied in order.
PROFILES: dict[str, tuple[str, ...]] = {
    "default": (),
    "cpu-embedded": ("profiles/cpu-embedded.yaml",),
    "gpu-triton": ("profiles/gpu-triton.yaml",),
    "gpu-hpa": ("profiles/gpu-hpa.yaml",),
    "external": ("profiles/external.yaml",),
    "gpu-triton+external": ("profiles/gpu-triton.yaml", "profiles/external.yaml"),
}

BASE_HEADER = (
    "# Rendered from charts/glimpse3d by `make chart-base`: helm template " + RELEASE + " charts/glimpse3d\n"
    "#   --namespace " + NAMESPACE + " -f charts/glimpse3d/profiles/gpu-triton.yaml\n"
    "#   -f charts/glimpse3d/profiles/external.yaml -f deploy/kustomize/base/values.yaml\n"
    "# Do not edit: change the chart or the values and re-render; tests/e2e/test_chart.py fails when this\n"
    "# file differs from a fresh render.\n"
)


class ChartError(RuntimeError):
    """A tool failed or a check did not pass; the message has the details."""


def _tool(name: str) -> Path:
    path = k8s_tools.find_tool(name)
    if path is None:
        raise ChartError(f"{name} not found: run `make k8s-tools` (or set {name.upper()})")
    return path


def _run(args: Sequence[str | Path], cwd: Path = REPO_ROOT) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shown = " ".join(str(a) for a in args)
        output = result.stderr.strip() or result.stdout.strip()
        raise ChartError(f"`{shown}` failed (exit {result.returncode}):\n{output}")
    return result.stdout


def _values_args(values_files: Iterable[str | Path], set_values: Iterable[str]) -> list[str]:
    args: list[str] = []
    for f in values_files:
        path = Path(f)
        args += ["-f", str(path if path.is_absolute() else CHART / path)]
    for s in set_values:
        args += ["--set", s]
    return args


def helm_lint(values_files: Iterable[str | Path] = (), set_values: Iterable[str] = ()) -> str:
    return _run([_tool("helm"), "lint", "--strict", CHART, *_values_args(values_files, set_values)])


def helm_template(values_files: Iterable[str | Path] = (), set_values: Iterable[str] = (),
                  namespace: str = NAMESPACE, release: str = RELEASE) -> str:
    return _run([_tool("helm"), "template", release, CHART, "--namespace", namespace,
                 *_values_args(values_files, set_values)])


def render_profile(name: str) -> str:
    return helm_template(PROFILES[name])


def render_base() -> str:
    return BASE_HEADER + helm_template(BASE_VALUES)


def kustomize(overlay: str) -> str:
    return _run([_tool("kubectl"), "kustomize", KUSTOMIZE / "overlays" / overlay])


def load_docs(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


# ---- validation --------------------------------------------------------------------------------

OBJECT_META_REF = "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def _strict(schema: Any) -> Any:
    """A CRD's structural schema made strict the way the API server's strict field validation
    (kubectl's default) treats objects: properties not in the schema are errors."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in load_docs(path.read_text()):
            spec = crd["spec"]
            for version in spec["versions"]:
                if not version.get("served"):
                    continue
                schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                # An id under kubernetes.io/api/ so that the ObjectMeta reference resolves like the
                # references of kubernetes-validate's own schemas.
                schema["$id"] = f"https://kubernetes.io/api/crd/{spec['group']}/{version['name']}/{spec['names']['kind']}"
                schema["properties"]["metadata"] = {"$ref": OBJECT_META_REF}
                schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
                schemas[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = schema
    return schemas


def _crd_rules(doc: dict[str, Any]) -> list[str]:
    """The CRDs' x-kubernetes-validations (CEL) rules that apply, re-implemented: KEDA's ScaledObject
    has one (minReplicaCount <= maxReplicaCount, max defaulting to 100); the ServiceMonitor CRD has none."""
    if doc.get("kind") != "ScaledObject":
        return []
    spec = doc.get("spec", {})
    low, high = spec.get("minReplicaCount"), spec.get("maxReplicaCount", 100)
    if low is not None and low > high:
        return [f"spec: minReplicaCount must be less than or equal to maxReplicaCount ({low} > {high})"]
    return []


class Validator:
    """Validates manifests against Kubernetes ``kubernetes_version`` (strict) and the vendored CRDs."""

    def __init__(self, kubernetes_version: str = KUBERNETES_VERSION) -> None:
        import jsonschema
        import kubernetes_validate.utils as kv
        from referencing import Registry, Resource

        self.kubernetes_version = kubernetes_version
        self._kv = kv
        self._jsonschema = jsonschema
        version = [v for v in kv.all_versions() if kv.major_minor(v) <= kubernetes_version][-1]
        if kv.major_minor(version) != kubernetes_version:
            raise ChartError(f"kubernetes-validate has no schemas for Kubernetes {kubernetes_version}")
        self._schema_dir = f"kubernetes-json-schema/v{version}-local-strict"
        definitions = self._load(f"{self._schema_dir}/_definitions.json")
        self._registry = Resource.from_contents(definitions) @ Registry()
        self._validators: dict[tuple[str, str], Any] = {}

    def _load(self, name: str) -> Any:
        return self._kv.schema_contents(name, self.kubernetes_version)

    def _validator(self, api_version: str, kind: str) -> Any:
        key = (api_version, kind)
        if key not in self._validators:
            crd = _crd_schemas().get(key)
            if crd is not None:
                schema = crd
            else:
                # kubernetes-validate's file naming: rbac.authorization.k8s.io/v1 -> rbac-v1, v1 -> v1
                group, _, version = api_version.rpartition("/")
                suffix = f"{group.split('.')[0]}-{version}" if group else version
                try:
                    schema = self._load(f"{self._schema_dir}/{kind.lower()}-{suffix}.json")
                except FileNotFoundError:
                    raise ChartError(f"no schema for {kind} {api_version} in Kubernetes {self.kubernetes_version} "
                                     f"or in {CRD_DIR.relative_to(REPO_ROOT)}") from None
            self._validators[key] = self._jsonschema.Draft202012Validator(schema, registry=self._registry)
        return self._validators[key]

    def errors(self, doc: dict[str, Any]) -> list[str]:
        """Problems of one manifest (empty when valid), each naming the object and the field path."""
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if not isinstance(doc.get("apiVersion"), str) or not isinstance(doc.get("kind"), str):
            return [f"{name}: apiVersion and kind must be strings"]
        try:
            validator = self._validator(doc["apiVersion"], doc["kind"])
        except ChartError as err:
            return [f"{name}: {err}"]
        found = [f"{name}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                 for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]
        return found + [f"{name}: {rule}" for rule in _crd_rules(doc)]


@functools.cache
def validator() -> Validator:
    return Validator()


def validate_docs(docs: Iterable[dict[str, Any]]) -> list[str]:
    check = validator()
    return [problem for doc in docs for problem in check.errors(doc)]


# ---- commands ----------------------------------------------------------------------------------

def check_base() -> str | None:
    """None when the committed base equals a fresh render, else a unified diff."""
    fresh = render_base()
    committed = BASE_RENDER.read_text() if BASE_RENDER.exists() else ""
    if fresh == committed:
        return None
    return "".join(difflib.unified_diff(committed.splitlines(True), fresh.splitlines(True),
                                        str(BASE_RENDER.relative_to(REPO_ROOT)), "fresh render", n=2))


def check_all(out: Path | None) -> list[str]:
    """Lint, render and validate every profile and overlay; returns the problems found."""
    problems: list[str] = []
    renders: dict[str, str] = {}
    for name, files in PROFILES.items():
        try:
            helm_lint(files)
            renders[f"profile-{name}"] = helm_template(files)
        except ChartError as err:
            problems.append(f"profile {name}: {err}")
    drift = check_base()
    if drift:
        problems.append(f"{BASE_RENDER.relative_to(REPO_ROOT)} is not a fresh render (run `make chart-base`):\n{drift}")
    for overlay in OVERLAYS:
        try:
            renders[f"kustomize-{overlay}"] = kustomize(overlay)
        except ChartError as err:
            problems.append(f"overlay {overlay}: {err}")
    for name, text in renders.items():
        problems += [f"{name}: {p}" for p in validate_docs(load_docs(text))]
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}.yaml").write_text(text)
    return problems


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_all = sub.add_parser("all", help="lint, render and validate every profile and overlay")
    p_all.add_argument("--out", type=Path, help="write each render here")
    p_base = sub.add_parser("base", help="re-render deploy/kustomize/base/glimpse3d.yaml")
    p_base.add_argument("--check", action="store_true", help="only compare; exit 1 when it differs")
    p_val = sub.add_parser("validate", help=f"validate manifest files against Kubernetes {KUBERNETES_VERSION}")
    p_val.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "all":
            problems = check_all(args.out)
            for problem in problems:
                log.error("%s", problem)
            if not problems:
                where = f" (renders in {args.out})" if args.out else ""
                log.info("chart: %d profiles and %d overlays linted, rendered and valid for Kubernetes %s%s",
                         len(PROFILES), len(OVERLAYS), KUBERNETES_VERSION, where)
            return 1 if problems else 0
        if args.command == "base":
            if args.check:
                drift = check_base()
                if drift:
                    log.error("%s", drift)
                return 1 if drift else 0
            BASE_RENDER.write_text(render_base())
            log.info("wrote %s", BASE_RENDER.relative_to(REPO_ROOT))
            return 0
        problems = [f"{f}: {p}" for f in args.files for p in validate_docs(load_docs(f.read_text()))]
        for problem in problems:
            log.error("%s", problem)
        return 1 if problems else 0
    except ChartError as err:
        log.error("%s", err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
