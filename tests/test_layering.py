"""The web layer never imports torch: only the model_* modules do, behind model_loader."""
import subprocess
import sys

from live_server import ROOT

WEB_MODULES = ["app", "api", "config", "engine", "errors", "generation", "images", "inference", "prefix_cache", "protocol",
               "remote_images", "responses", "stops", "history_api", "history_recorder", "history_store",
               "history_schema", "image_store"]


def test_the_web_layer_and_the_app_do_not_import_torch(tmp_path):
    code = ("import sys\n" + "".join(f"import {m}\n" for m in WEB_MODULES)
            + "from config import Settings\n"
            + "unstarted = engine.Engine(app.load_model, queue_size=1)  # its loader would import torch\n"
            + f"settings = Settings.from_mapping({{'DATA_DIR': {str(tmp_path)!r}}})\n"
            + "app.create_app(settings, unstarted).test_client().get('/health')\n"
            + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
