"""deploy/: what cannot be run here (Docker) is checked for consistency with what is: the settings, the tested nginx
configuration, and the metrics the Grafana dashboard queries."""

import json
import re

import yaml

from loupe.settings import documented_settings
from tests.support.live_server import ROOT
from tests.support.nginx import DEPLOY, check, render

COMPOSE = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SETTINGS = {name for name, _default, _help in documented_settings()}
# Read by libraries, not by Loupe's settings: where huggingface_hub keeps downloads; Python's output buffering.
OTHER_VARIABLES = {"HF_HOME", "PYTHONUNBUFFERED"}
LOUPE_SERVICES = sorted(name for name in COMPOSE["services"] if name.startswith("loupe-"))


def test_the_compose_file_sets_only_real_settings():
    assert len(LOUPE_SERVICES) >= 2
    for name in LOUPE_SERVICES:
        service = COMPOSE["services"][name]
        assert service["build"] == {"context": "..", "dockerfile": "Dockerfile"}
        assert set(service["environment"]) - SETTINGS - OTHER_VARIABLES == set(), name
        environment = service["environment"]
        # What tests/test_nginx.py runs Loupe with behind its nginx, and what several instances need shared.
        assert environment["TRUSTED_PROXIES"] == "1"
        assert environment["DATABASE_URL"].startswith("postgresql+psycopg://")
        assert environment["RATE_LIMIT_STORAGE"] == "redis://redis:6379/0"
        assert "data:/data" in service["volumes"] and environment["DATA_DIR"] == "/data"
    assert {"postgres", "redis", "nginx"} <= set(COMPOSE["services"])


def test_the_dockerfile_sets_only_real_settings_and_checks_health():
    names = set(re.findall(r"^\s+(?:ENV )?([A-Z_]+)=", DOCKERFILE, re.M)) - {"ENV"}
    assert names and names - SETTINGS - OTHER_VARIABLES == set()
    assert re.search(r"^HEALTHCHECK .*\n.*/health", DOCKERFILE, re.M)
    assert re.search(r"^USER loupe$", DOCKERFILE, re.M) and "useradd" in DOCKERFILE
    assert "--index-url https://download.pytorch.org/whl/cpu" in DOCKERFILE
    for source in re.findall(r"^COPY (.+) \S+$", DOCKERFILE, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
            assert f"!{path}" in (ROOT / ".dockerignore").read_text(), f"{path} is left out of the build context"


def test_the_compose_nginx_is_the_tested_configuration(tmp_path):
    nginx = COMPOSE["services"]["nginx"]
    assert (ROOT / "deploy" / nginx["build"]["context"]).resolve() == DEPLOY
    image = (DEPLOY / "Dockerfile").read_text()
    assert "COPY loupe.conf /etc/nginx/conf.d/loupe.conf" in image and "COPY loupe/ /etc/nginx/loupe/" in image
    # Only the upstream differs: one server per Loupe service, the rest as deploy/nginx/loupe/upstream.conf.
    assert nginx["volumes"] == ["./compose/upstream.conf:/etc/nginx/loupe/upstream.conf:ro"]
    upstream = (ROOT / "deploy" / "compose" / "upstream.conf").read_text()
    servers = re.findall(r"^\s*server ([\w-]+):8000 max_fails=3 fail_timeout=10s;$", upstream, re.M)
    assert servers == LOUPE_SERVICES

    def directives(text: str) -> list[str]:
        lines = (line.split("#")[0].strip() for line in text.splitlines())
        return [line for line in lines if line and not line.startswith("server ")]

    assert directives(upstream) == directives((DEPLOY / "loupe" / "upstream.conf").read_text())  # the hash too
    # nginx -t on it, with the services' names (which resolve only inside compose) as loopback addresses.
    main = render(tmp_path, 8080, ["127.0.0.1:8000"])
    ports = {name: 8000 + n for n, name in enumerate(LOUPE_SERVICES)}
    local = re.sub(r"server ([\w-]+):8000", lambda m: f"server 127.0.0.1:{ports[m.group(1)]}", upstream)
    (tmp_path / "loupe" / "upstream.conf").write_text(local)
    checked = check(main)
    assert checked.returncode == 0, checked.stderr


def test_prometheus_scrapes_every_instance_directly():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = config["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"{name}:8000" for name in LOUPE_SERVICES]


def dashboard_queries() -> list[str]:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "loupe.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [variable["definition"] for variable in dashboard["templating"]["list"] if "definition" in variable]
    return queries


def test_every_metric_and_label_the_dashboard_queries_exists(client):
    answer = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    for body in (answer, {"messages": "not a list"}):  # an answer, and an error for the error series
        client.post("/v1/chat/completions", json=body).close()  # requests are counted when they close
    exposition = client.get("/metrics").get_data(as_text=True)
    series: dict[str, set[str]] = {}
    for name, labels in re.findall(r"^(loupe_\w+)(?:\{([^}]*)\})? ", exposition, re.M):
        series.setdefault(name, set()).update(re.findall(r"(\w+)=", labels or ""))
    # Prometheus adds these when it scrapes (instance, job) or they come with every histogram bucket (le).
    added = {"instance", "job", "le"}
    queries = dashboard_queries()
    assert len(queries) > 10
    for query in queries:
        for name in set(re.findall(r"\bloupe_\w+", query)):
            assert name in series, f"{name} (queried by {query!r}) is not in /metrics"
            used = set(re.findall(r"(\w+)\s*(?:=~|!=|=)", query)) | {
                label.strip() for group in re.findall(r"by \(([^)]*)\)", query) for label in group.split(",")
            }
            assert used - added - series[name] == set(), (name, query)
