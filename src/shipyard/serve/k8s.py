"""`shipyard export k8s NAME`: what a Kubernetes cluster needs to serve a deployment — a Deployment
whose probes are the V2 health routes, a Service, a HorizontalPodAutoscaler, a ConfigMap (where
the artifact store is) and a Secret (the registry URL, the token and the object store's keys) —
plus a Dockerfile for the serving-only image (the base install: no torch). Replicas share the
registry (PostgreSQL) and the artifact store (S3, or a shared volume), and follow the registry's
aliases and traffic split like any `shipyard serve`; a pod's own home is only a cache.

An export a pod could not serve from is refused (a usage error): an SQLite registry (a file
inside one pod), or artifacts in a local folder without a volume to mount. Credentials never
come from this machine's environment: the Secret holds placeholders unless given explicitly,
or an existing Secret is referenced (`secret_name`)."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from shipyard.errors import UsageError

PORT = 8000
SECRET_KEYS = ("SHIPYARD_DATABASE_URL", "SHIPYARD_TOKEN")
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
FEEDBACK_KEY = "SHIPYARD_FEEDBACK_SECRET"
PLACEHOLDER = "CHANGE-ME"
HOME = "/var/lib/shipyard"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def k8s_name(model: str) -> str:
    """A DNS-1123 label for the objects of `model` (`shipyard-<model>`, lower case)."""
    name = "shipyard-" + re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-")
    name = name[:63].rstrip("-")
    if not DNS_LABEL.match(name):
        raise UsageError(f"cannot make a Kubernetes name from model {model!r}")
    return name


def manifests(model: str, *, image: str, artifacts: str | None, replicas: int = 2, max_replicas: int = 6,
              workers: int = 1, cpu: str = "1", memory: str = "512Mi", cpu_target: int = 70,
              database_url: str | None = None, token: str | None = None, window: int = 250,
              drain_grace_s: float = 5.0, drain_timeout_s: float = 30.0, namespace: str | None = None,
              s3_endpoint: str | None = None, s3_region: str | None = None, s3_keys: bool = True,
              artifacts_claim: str | None = None, secret_name: str | None = None) -> list[dict[str, Any]]:
    """The objects, in apply order. `artifacts`: the store the registry's bundles are in
    (s3://BUCKET/PREFIX, or a shared folder mounted from PersistentVolumeClaim `artifacts_claim`).
    The Secret holds placeholders unless `database_url`/`token` are given (a Secret with real
    values belongs in your secret store, not in git); with `secret_name` no Secret is written and
    the pods read that existing one (keys: SECRET_KEYS, and S3_KEYS for S3 with `s3_keys`)."""
    if not 1 <= replicas <= max_replicas:
        raise UsageError(f"--replicas ({replicas}) must be in 1..--max-replicas ({max_replicas})")
    if workers < 1 or not 1 <= cpu_target <= 100:
        raise UsageError("--workers must be ≥ 1 and --cpu-target in 1..100")
    check_database(database_url)
    if secret_name is not None:
        if database_url is not None or token is not None:
            raise UsageError("--database-url goes into the Secret this export writes; with --secret-name, put "
                             "SHIPYARD_DATABASE_URL into that Secret instead")
        if not DNS_SUBDOMAIN.match(secret_name):
            raise UsageError(f"--secret-name {secret_name!r} is not a Kubernetes object name")
    store_env, volumes, mounts = artifact_store(artifacts, s3_endpoint=s3_endpoint, s3_region=s3_region,
                                                claim=artifacts_claim)
    name = k8s_name(model)
    labels = {"app.kubernetes.io/name": "shipyard", "app.kubernetes.io/instance": name,
              "app.kubernetes.io/component": "server", "shipyard.dev/model": model.lower()[:63]}
    selector = {"app.kubernetes.io/instance": name, "app.kubernetes.io/component": "server"}
    meta = {"name": name, "labels": labels, **({"namespace": namespace} if namespace else {})}
    config = {"SHIPYARD_HOME": HOME, "SHIPYARD_SERVE_WINDOW": str(window), "PYTHONUNBUFFERED": "1", **store_env}
    keys = [*SECRET_KEYS, *(S3_KEYS if s3_keys and store_env["SHIPYARD_ARTIFACTS"].startswith("s3://") else ())]
    secret = {"SHIPYARD_DATABASE_URL": database_url or
              f"postgresql+psycopg://shipyard:{PLACEHOLDER}@postgres:5432/shipyard",
              "SHIPYARD_TOKEN": token or PLACEHOLDER, **dict.fromkeys(keys[len(SECRET_KEYS):], PLACEHOLDER)}
    secret_ref = secret_name or name
    grace = int(drain_grace_s + drain_timeout_s + 10)
    command = ["shipyard", "serve", model, "--host", "0.0.0.0", "--port", str(PORT), "--workers", str(workers),  # noqa: S104
               "--drain-grace", f"{drain_grace_s:g}", "--drain-timeout", f"{drain_timeout_s:g}",
               "--window", str(window)]
    container = {
        "name": "server", "image": image, "imagePullPolicy": "IfNotPresent", "command": command,
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "envFrom": [{"configMapRef": {"name": name}}],
        "env": [*({"name": key, "valueFrom": {"secretKeyRef": {"name": secret_ref, "key": key}}} for key in keys),
                # the feedback proof is opt-in: set when the Secret has the key, absent (proof off) otherwise
                {"name": FEEDBACK_KEY, "valueFrom": {"secretKeyRef": {"name": secret_ref, "key": FEEDBACK_KEY,
                                                                      "optional": True}}}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 2,
                           "timeoutSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10,
                          "timeoutSeconds": 3, "failureThreshold": 3, "initialDelaySeconds": 10},
        "startupProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 1,
                         "failureThreshold": 120},
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}},
        "volumeMounts": [{"name": "home", "mountPath": HOME}, *mounts],
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
    }
    secrets = [] if secret_name else [{"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
                                       "stringData": secret}]
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": config},
        *secrets,
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
            "replicas": replicas, "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": labels}, "spec": {
                "terminationGracePeriodSeconds": grace,
                "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
                "containers": [container],
                # home: the bundle cache and scratch space; the registry is the shared database and
                # the bundles are in the shared artifact store
                "volumes": [{"name": "home", "emptyDir": {}}, *volumes]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {
            "type": "ClusterIP", "selector": selector,
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}},
        {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta, "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": replicas, "maxReplicas": max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": cpu_target}}}]}},
    ]


def check_database(url: str | None) -> None:
    """Refuse a registry the replicas cannot share: SQLite is a file inside one pod (on its
    emptyDir, empty at every start), so no pod would find a model, and replicas would not agree."""
    if url is None:
        return
    if "://" not in url:
        raise UsageError(f"--database-url {url!r} is not a database URL (postgresql+psycopg://USER@HOST:PORT/DB)")
    if url.split(":", 1)[0].split("+")[0] == "sqlite":
        raise UsageError("--database-url is SQLite, a file inside one pod: the replicas need the shared registry "
                         "database (postgresql+psycopg://USER@HOST:PORT/DB)")


def artifact_store(url: str | None, *, s3_endpoint: str | None = None, s3_region: str | None = None,
                   claim: str | None = None) -> tuple[dict[str, str], list[dict[str, Any]], list[dict[str, Any]]]:
    """The pods' view of the artifact store: (ConfigMap entries, volumes, volume mounts). S3 as
    named; a folder only from a shared volume (`claim`, mounted where the URL says); a local
    folder without one is refused, as no pod could read it."""
    if not url:
        raise UsageError("give --artifacts: the store the registry's bundles are in (s3://BUCKET/PREFIX, or "
                         "file:///PATH with --artifacts-claim); a pod cannot read this machine's folders")
    scheme = urlparse(url).scheme if "://" in url else ""
    if scheme != "s3" and (s3_endpoint or s3_region):
        raise UsageError("--s3-endpoint and --s3-region go with --artifacts s3://BUCKET/PREFIX")
    if scheme == "s3":
        if claim is not None:
            raise UsageError("--artifacts-claim mounts a shared folder; an s3:// store needs none")
        if not urlparse(url).netloc:
            raise UsageError(f"--artifacts {url!r}: an S3 store is named s3://BUCKET[/PREFIX]")
        env = {"SHIPYARD_ARTIFACTS": url}
        if s3_endpoint:
            if urlparse(s3_endpoint).scheme not in ("http", "https"):
                raise UsageError(f"--s3-endpoint {s3_endpoint!r}: give an http(s):// URL")
            env["SHIPYARD_S3_ENDPOINT_URL"] = s3_endpoint
        if s3_region:
            env["AWS_DEFAULT_REGION"] = s3_region
        return env, [], []
    if scheme not in ("", "file"):
        raise UsageError(f"--artifacts {url!r}: use s3://BUCKET/PREFIX, or file:///PATH with --artifacts-claim")
    path = unquote(urlparse(url).path) if scheme == "file" else url
    if claim is None:
        raise UsageError(f"--artifacts {url!r} is a folder, which a pod sees only from a volume: add "
                         "--artifacts-claim PVC (a shared PersistentVolumeClaim holding it), or use s3://BUCKET/PREFIX")
    if not PurePosixPath(path).is_absolute() or path.rstrip("/") in ("", HOME) or path.startswith(HOME + "/"):
        raise UsageError(f"--artifacts {url!r}: give the folder's absolute path in the pod (not under {HOME})")
    if not DNS_SUBDOMAIN.match(claim):
        raise UsageError(f"--artifacts-claim {claim!r} is not a Kubernetes object name")
    return ({"SHIPYARD_ARTIFACTS": f"file://{path}"},
            [{"name": "artifacts", "persistentVolumeClaim": {"claimName": claim}}],
            [{"name": "artifacts", "mountPath": path}])


def requirements() -> str:
    """The serving install's requirements (the base dependencies, the PostgreSQL driver and boto3), each
    pinned to the version installed here, so the image runs what was tested."""
    import tomllib
    from importlib import metadata
    from pathlib import Path

    source = Path(__file__).resolve().parents[3] / "pyproject.toml"
    if source.is_file():  # a source checkout: its pyproject is the truth
        project = tomllib.loads(source.read_text())["project"]
        specs = [*project["dependencies"], *project["optional-dependencies"]["postgres"],
                 *project["optional-dependencies"]["s3"]]
    else:
        specs = [r for r in metadata.requires("shipyard") or []
                 if "extra ==" not in r or 'extra == "postgres"' in r or 'extra == "s3"' in r]
    lines = []
    for spec in specs:
        spec = spec.split(";")[0].strip()
        m = re.match(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?", spec)
        assert m is not None, spec
        try:
            pinned = f"{m[1]}{m[2] or ''}=={metadata.version(m[1])}"
        except metadata.PackageNotFoundError:
            pinned = spec
        lines.append(pinned)
    return "# the serving install: shipyard's base dependencies, the PostgreSQL driver and boto3 (no torch)\n" + \
        "\n".join(sorted(lines, key=str.lower)) + "\n"


def dockerfile(python: str = "3.11") -> str:
    """The serving-only image: the base install (no torch), a non-root user, `shipyard` as the
    entrypoint. Build it from the project folder (`docker build -f Dockerfile.serve .`)."""
    return f"""# shipyard serving image: the base install (registry, bundles, `shipyard serve`), no torch
FROM python:{python}-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 SHIPYARD_HOME=/var/lib/shipyard
WORKDIR /src
COPY requirements-serve.txt ./
RUN pip install --no-cache-dir -r requirements-serve.txt
COPY pyproject.toml README.md ./
COPY src ./src
# the project itself, from source; its dependencies are pinned above
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-deps . \\
    && useradd --uid 10001 --user-group --no-create-home shipyard \\
    && mkdir -p /var/lib/shipyard && chown shipyard:shipyard /var/lib/shipyard
USER 10001
EXPOSE {PORT}
HEALTHCHECK --interval=10s --timeout=3s CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:{PORT}/v2/health/live')"]
ENTRYPOINT ["shipyard"]
CMD ["serve", "--host", "0.0.0.0", "--port", "{PORT}"]
"""


def filename(obj: dict[str, Any]) -> str:
    return f"{obj['kind'].lower()}.yaml"
