"""gunicorn settings for Loupe: `gunicorn -c gunicorn.conf.py 'app:create_app()'`."""

from loupe.settings import Settings
from loupe.web import lifecycle

_settings = Settings.from_env()

# Listen where HOST/PORT say (default 0.0.0.0:8000).
bind = f"{_settings.host}:{_settings.port}"

# One worker process: each worker holds its own copy of the model (8.5 GB in float32).
workers = 1

# Each running or queued generation holds a thread until its answer ends (up to MAX_BATCH + QUEUE_SIZE
# of them); THREADS above that leaves threads for /health and the page.
worker_class = "gthread"
threads = _settings.threads

# Never load the app in the master and fork it: PyTorch's thread pools do not survive fork.
preload_app = False

# A worker silent for this long is restarted; longer than the slowest CPU generation.
timeout = _settings.generation_timeout

# On SIGTERM the app gives generations SHUTDOWN_GRACE seconds, then ends them with a 503 error;
# gunicorn waits a little longer, so those errors reach the clients before the worker stops.
graceful_timeout = _settings.shutdown_grace + lifecycle.EXIT_SLACK_SECONDS

# Seconds an idle keep-alive connection stays open (the page polls /health).
keepalive = 5

# No gunicorn access log: the app logs one line per request itself, with its id and token counts.
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()

if _settings.log_format == "json":
    # gunicorn's own lines (boot, worker start and stop) in the app's JSON format too. The root logger
    # is set here as well, since gunicorn's defaults would otherwise give it a plain-text handler.
    _handler = {
        "class": "logging.StreamHandler",
        "formatter": "json",
        "filters": ["request_id"],
        "stream": "ext://sys.stderr",
    }
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "loupe.web.observability.JsonFormatter"}},
        "filters": {"request_id": {"()": "loupe.web.observability.RequestIdFilter"}},
        "handlers": {"json": _handler},
        "root": {"level": _settings.log_level.upper(), "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {
                "level": _settings.log_level.upper(),
                "handlers": ["json"],
                "propagate": False,
                "qualname": "gunicorn.error",
            }
        },
    }


def post_worker_init(worker):
    """Tell the app when SIGTERM begins the graceful stop, so /health and new generations say 503."""
    lifecycle.drain_on_sigterm(worker.wsgi)


def worker_exit(server, worker):
    """Log whether the worker stops with generations unfinished."""
    app = getattr(worker, "wsgi", None)  # absent when the app failed to load (bad settings)
    if app is not None:
        lifecycle.report_exit(app)
