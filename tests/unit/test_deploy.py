"""What can be checked of the deployment files without Docker or a cluster."""

from __future__ import annotations

import glob
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from polypstream.cli import build_parser
from polypstream.config import ServerConfig
from polypstream.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
METRIC_NAME = re.compile(r"\b((?:polypstream|process)_[a-z_]+)\b")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def exported_names() -> set[str]:
    """Every sample name /metrics can carry, from the metric families the service defines."""
    names = set()
    metrics = Metrics(CollectorRegistry())
    metrics.track_gpu("NVIDIA H100 80GB HBM3", "GPU-0")  # registered where the model runs on a GPU
    for family in CollectorRegistry.collect(metrics.registry):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
    return names


def test_every_dashboard_query_names_an_exported_metric() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/polypstream.json").read_text())
    exported = exported_names()
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert len(queries) >= 10
    for query in queries:
        names = METRIC_NAME.findall(query)
        assert names, f"no metric in {query!r}"
        for name in names:
            assert name in exported, f"dashboard query uses {name}, which the service does not export"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("latency", "dropped", "batch", "streams", "memory", "gpu"):
        assert topic in titles


def test_metric_names_follow_prometheus_conventions() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.track_gpu("NVIDIA H100 80GB HBM3", "GPU-0")
    for family in CollectorRegistry.collect(metrics.registry):
        if family.name.startswith("process_"):
            continue
        assert family.name.startswith("polypstream_")
        assert not re.search(r"_(ms|milliseconds|kb|mb)$", family.name)
        for sample in family.samples:
            assert not {"stream_id", "index", "frame"} & set(sample.labels)
    buckets = Metrics(CollectorRegistry()).stage_seconds._upper_bounds
    assert buckets[0] == 0.0005 and 1.0 in buckets


def test_prometheus_scrapes_the_default_metrics_port() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    static = config["scrape_configs"][0]["static_configs"][0]["targets"]
    assert static == [ServerConfig.metrics_address]
    assert any("kubernetes_sd_configs" in job for job in config["scrape_configs"])


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict[str, Any]]]:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy/kubernetes/polypstream.yaml").read_text()) if d]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        assert {"apiVersion", "kind", "metadata", "spec"} <= set(doc)
        by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def test_deployment_requests_a_gpu_and_probes_grpc_health(manifests: dict[str, list[dict[str, Any]]]) -> None:
    (deployment,) = manifests["Deployment"]
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["POLYPSTREAM_ADDRESS"].endswith(f":{ports['grpc']}")
    assert env["POLYPSTREAM_METRICS_ADDRESS"].endswith(f":{ports['metrics']}")
    assert env["POLYPSTREAM_HEALTH_ADDRESS"].endswith(f":{ports['health']}")
    assert "POLYPSTREAM_TOKEN" in env and env["POLYPSTREAM_TOKEN"] is None  # from a Secret, not a value
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == ports["health"]
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve" and args.tls_cert and args.tls_key
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == ports["metrics"]


def test_services_headless_grpc_and_metrics(manifests: dict[str, list[dict[str, Any]]]) -> None:
    services = {s["metadata"]["name"]: s for s in manifests["Service"]}
    pod_labels = manifests["Deployment"][0]["spec"]["template"]["metadata"]["labels"]
    grpc_service = services["polypstream"]["spec"]
    assert grpc_service["clusterIP"] == "None"  # headless: clients balance across replicas
    assert grpc_service["ports"][0]["port"] == 50051
    metrics = services["polypstream-metrics"]
    assert metrics["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()


def dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_copies_files_that_exist() -> None:
    for instruction, rest in dockerfile():
        if instruction == "COPY":
            *sources, _ = shlex.split(rest)
            for source in sources:
                assert glob.glob(str(ROOT / source)), f"Dockerfile copies {source}, which does not exist"


def test_dockerfile_runs_serve_as_non_root_with_a_grpc_healthcheck() -> None:
    steps = dockerfile()
    get = {instruction: rest for instruction, rest in steps}
    assert re.match(r"nvidia/cuda:13\.", get["FROM"]), "onnxruntime-gpu 1.31 needs CUDA 13"
    assert get["USER"] not in ("root", "0")
    entrypoint, cmd = json.loads(get["ENTRYPOINT"]), json.loads(get["CMD"])
    assert entrypoint == ["polypstream"]
    assert build_parser().parse_args(cmd).command == "serve"
    health = json.loads(get["HEALTHCHECK"].split("CMD", 1)[1])
    assert health[:2] == ["polypstream", "health"]
    health_args = build_parser().parse_args(health[1:])
    assert health_args.command == "health"
    exposed = {int(p) for p in get["EXPOSE"].split()}
    env = dict(re.findall(r"(POLYPSTREAM_[A-Z_]+)=(\S+)", get["ENV"]))
    assert health_args.server == env["POLYPSTREAM_HEALTH_ADDRESS"]  # probes the health-only port
    assert {
        int(env["POLYPSTREAM_ADDRESS"].rsplit(":", 1)[1]),
        int(env["POLYPSTREAM_METRICS_ADDRESS"].rsplit(":", 1)[1]),
    } <= exposed
    assert env["POLYPSTREAM_ADDRESS"].startswith("0.0.0.0:")
