"""The layers hold: web -> history, engine -> runtime -> protocol -> ground types; Flask and torch stay in theirs.

import-linter reads every import statement (those inside functions too); the fresh interpreters check what
importing the code really loads, so an import made some other way cannot slip through either.
"""

import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.live_server import ROOT

FLASK = ("flask", "werkzeug", "flask_cors", "flask_limiter")
TORCH = ("torch", "transformers")


def modules_of(*packages: str) -> list[str]:
    """Every module of these packages of loupe's, found on disk, so a new module is checked without a word here."""
    found = []
    for package in packages:
        found.append(package)
        path = ROOT / package.replace(".", "/")
        if path.is_dir():
            found += [
                info.name
                for info in pkgutil.walk_packages([str(path)], prefix=f"{package}.")
                if ".migrations" not in info.name
            ]  # Alembic's scripts run inside its own context
    return found


def loaded_after(code: str) -> set[str]:
    """Top-level packages a fresh interpreter has loaded after running `code` in the project's folder."""
    probe = code + "\nimport sys\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_the_import_contracts_hold():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_contracts_name_every_layer():
    # A package of loupe's that no contract names would be outside the rules.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    named = {name.strip() for layer in config[0]["layers"] for name in layer.split("|")}
    on_disk = {f"loupe.{info.name}" for info in pkgutil.iter_modules([str(ROOT / "loupe")])}
    assert on_disk == named


@pytest.mark.parametrize(
    "layer",
    [
        "loupe.engine",
        "loupe.runtime",
        "loupe.protocol",
        "loupe.history",
        "loupe.settings",
        "loupe.errors",
        "loupe.inference",
    ],
)
def test_no_layer_below_the_web_loads_flask(layer):
    imports = "".join(f"import {module}\n" for module in modules_of(layer))
    assert not loaded_after(imports) & set(FLASK)


def test_the_web_layer_and_the_app_load_no_torch(tmp_path):
    imports = "".join(f"import {module}\n" for module in modules_of("loupe.web"))
    code = (
        imports
        + "import app\nfrom loupe.engine.engine import Engine\nfrom loupe.settings import Settings\n"
        + "unstarted = Engine(app.load_model, queue_size=1)  # its loader would import torch\n"
        + f"settings = Settings.from_mapping({{'DATA_DIR': {str(tmp_path)!r}}})\n"
        + "assert app.create_app(settings, unstarted).test_client().get('/health').status_code == 503\n"
    )
    loaded = loaded_after(code)
    assert "flask" in loaded  # the probe really built the app
    assert not loaded & set(TORCH)


def test_backend_openai_answers_without_torch(tmp_path):
    # In front of an engine, Loupe loads no model: a whole request, image intake included, imports no torch.
    code = f"""
import app
from loupe.settings import Settings
from loupe.web.services import services
from tests.support.chat import ask, data_url, png
from tests.support.engines import wait_ready
from tests.support.fake_upstream import FakeUpstream

with FakeUpstream() as fake:
    settings = Settings.from_mapping({{"BACKEND": "openai", "BACKEND_URL": fake.url, "DATA_DIR": {str(tmp_path)!r}}})
    application = app.create_app(settings)
    wait_ready(services(application).engine)
    response = application.test_client().post("/v1/chat/completions", json=ask("What is it?", data_url(png())))
    assert response.status_code == 200, response.json
    assert fake.requests[0]["messages"][0]["content"][0]["type"] == "image_url"
    services(application).engine.close()
"""
    loaded = loaded_after(code)
    assert "httpx2" in loaded and "flask" in loaded  # the probe really sent a request up
    assert not loaded & set(TORCH)
