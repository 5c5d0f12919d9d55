"""`shipyard export …`: configuration for the tools teams already run (Prometheus, Grafana)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from shipyard.cli._common import JsonOpt, emit_json, err, reporting

export_app = typer.Typer(help="Write configuration for Prometheus and Grafana.", no_args_is_help=True,
                         rich_markup_mode=None)


def _write(text: str, output: Path | None, what: str, as_json: bool) -> None:
    """The file to `output`, else to stdout; with --json, the one-object contract either way (the
    file's text as `content` when there is no file)."""
    if output is None:
        if as_json:
            emit_json({"what": what, "content": text})
        else:
            typer.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    err.print(f"wrote {what} to {output}")
    if as_json:
        emit_json({"path": str(output.resolve()), "what": what})


@export_app.command("prometheus-rules")
def prometheus_rules(
    alerts: Annotated[Path | None, typer.Option(help="Alert rules file (TOML); default: the built-in rules.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The alert rules as a Prometheus rule file (YAML), over the series GET /metrics exposes.
    Check it with `promtool check rules FILE`."""
    with reporting(as_json):
        from shipyard.monitor import alert_rules
        from shipyard.monitor.exports import prometheus_rules as render

        config = alert_rules.load(alerts) if alerts else alert_rules.DEFAULT_RULES
        _write(render(config), output, f"{len(config.rules)} Prometheus alerting rule(s)", as_json)


@export_app.command("grafana")
def grafana(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
    title: Annotated[str, typer.Option(help="Dashboard title.")] = "shipyard",
    as_json: JsonOpt = False,
) -> None:
    """A Grafana dashboard (JSON) over shipyard's Prometheus series: traffic, latency, errors,
    batch size, drift, accuracy, traffic split and versions. Import it in Grafana."""
    with reporting(as_json):
        from shipyard.monitor.exports import grafana as render

        dash = render(title)
        if as_json and output is None:  # the dashboard is the result: one JSON object on one line
            emit_json(dash)
            return
        _write(json.dumps(dash, indent=2) + "\n", output, f"a Grafana dashboard of {len(dash['panels'])} panels",
               as_json)


@export_app.command("k8s")
def k8s(
    name: Annotated[str, typer.Argument(help="The model (deployment) to serve.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder: one file per object plus Dockerfile.serve (default: all objects to stdout).")] = None,
    image: Annotated[str, typer.Option(help="The serving image (build it with the Dockerfile written beside).")] = "shipyard-serve:latest",
    replicas: Annotated[int, typer.Option(help="Replicas (the autoscaler's minimum).")] = 2,
    max_replicas: Annotated[int, typer.Option(help="The autoscaler's maximum.")] = 6,
    workers: Annotated[int, typer.Option(help="Server worker processes per pod.")] = 1,
    cpu: Annotated[str, typer.Option(help="CPU request per pod.")] = "1",
    memory: Annotated[str, typer.Option(help="Memory request and limit per pod.")] = "512Mi",
    cpu_target: Annotated[int, typer.Option(help="The autoscaler's target CPU utilization, percent.")] = 70,
    namespace: Annotated[str | None, typer.Option(help="Namespace to put in the manifests.")] = None,
    artifacts: Annotated[str | None, typer.Option(envvar="SHIPYARD_ARTIFACTS", show_envvar=True, help="The artifact store the registry's bundles are in, as the pods reach it: s3://BUCKET/PREFIX, or file:///PATH of a shared volume (with --artifacts-claim). Required: a pod cannot read this machine's folders.")] = None,
    s3_endpoint: Annotated[str | None, typer.Option(envvar="SHIPYARD_S3_ENDPOINT_URL", show_envvar=True, help="Endpoint of an S3-compatible server (MinIO…), as the pods reach it; default: AWS.")] = None,
    s3_region: Annotated[str | None, typer.Option(help="AWS_DEFAULT_REGION for the pods.")] = None,
    s3_keys: Annotated[bool, typer.Option(help="Give the pods AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the Secret; --no-s3-keys when the pod's own identity (IRSA, workload identity) has access.")] = True,
    artifacts_claim: Annotated[str | None, typer.Option(help="PersistentVolumeClaim holding a file:// artifact store (shared by every replica), mounted at its path.")] = None,
    database_url: Annotated[str | None, typer.Option(help="The shared registry database (PostgreSQL) written into the Secret, as given; default: a placeholder to fill from your secret store. Never read from this environment. SQLite is refused (a file inside one pod).")] = None,
    secret_name: Annotated[str | None, typer.Option(help="Use this existing Secret (keys SHIPYARD_DATABASE_URL, SHIPYARD_TOKEN and, for S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) instead of writing one.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Kubernetes manifests for serving NAME from the shared registry and artifact store: Deployment
    (probes on the V2 health routes, graceful drain), Service, HorizontalPodAutoscaler, ConfigMap
    (where the artifacts are), Secret (SHIPYARD_DATABASE_URL, SHIPYARD_TOKEN and the S3 keys, as
    placeholders to fill from your secret store unless given, or --secret-name for an existing one),
    and a Dockerfile for the serving-only image (no torch). Refused (exit 2) when a pod could not
    fetch its models: no --artifacts, a folder without --artifacts-claim, or an SQLite database."""
    with reporting(as_json):
        from urllib.parse import urlparse

        from shipyard.monitor.exports import _yaml
        from shipyard.serve import k8s as k8s_mod

        objs = k8s_mod.manifests(name, image=image, replicas=replicas, max_replicas=max_replicas, workers=workers,
                                 cpu=cpu, memory=memory, cpu_target=cpu_target, namespace=namespace,
                                 artifacts=artifacts, s3_endpoint=s3_endpoint, s3_region=s3_region, s3_keys=s3_keys,
                                 artifacts_claim=artifacts_claim, database_url=database_url, secret_name=secret_name)
        if database_url and urlparse(database_url).password:
            err.print("note: the Secret holds the database password as given: apply it, do not commit it")
        docs = {k8s_mod.filename(o): "# generated by `shipyard export k8s`\n" + _yaml(o) + "\n" for o in objs}
        if output is None:
            typer.echo("---\n".join(docs.values()), nl=False)
            return
        output.mkdir(parents=True, exist_ok=True)
        for fname, text in docs.items():
            (output / fname).write_text(text)
        (output / "Dockerfile.serve").write_text(k8s_mod.dockerfile())
        (output / "requirements-serve.txt").write_text(k8s_mod.requirements())
        err.print(f"wrote {len(docs)} manifests, Dockerfile.serve and requirements-serve.txt to {output} "
                  f"(kubectl apply -f {output}; build the image from the project folder with those two files)")
        if as_json:
            emit_json({"path": str(output.resolve()), "files": [*docs, "Dockerfile.serve", "requirements-serve.txt"]})


@export_app.command("prometheus")
def prometheus(
    targets: Annotated[list[str] | None, typer.Argument(help="HOST:PORT of every replica.")] = None,
    kubernetes: Annotated[str | None, typer.Option(help="Instead of targets: find the pods of `shipyard export k8s` in this namespace (Kubernetes discovery; Debian's Prometheus build lacks it, so it is not tested here).")] = None,
    rules: Annotated[str | None, typer.Option(help="A rules file to load (from `shipyard export prometheus-rules`).")] = None,
    interval: Annotated[float, typer.Option(help="Scrape interval, seconds.")] = 5.0,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """A Prometheus configuration scraping every replica of a deployment (each replica's /metrics
    merges its workers). Check it with `promtool check config FILE`."""
    with reporting(as_json):
        from shipyard.errors import UsageError
        from shipyard.monitor.exports import prometheus_config

        if bool(targets) == bool(kubernetes is not None):
            raise UsageError("give the replicas' HOST:PORT targets or --kubernetes NAMESPACE (one of them)")
        for t in targets or []:
            host, _, port = t.rpartition(":")
            if not host or not port.isdigit():
                raise UsageError(f"target {t!r}: expected HOST:PORT")
        if interval <= 0:
            raise UsageError("--interval must be > 0")
        text = prometheus_config(targets or [], kubernetes=kubernetes, scrape_interval_s=interval, rules_file=rules)
        _write(text, output, f"a Prometheus configuration ({len(targets or [])} targets)" if targets else
               f"a Prometheus configuration (pods in namespace {kubernetes})", as_json)
