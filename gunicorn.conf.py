"""gunicorn settings for Loupe: `gunicorn -c gunicorn.conf.py 'app:create_app()'`."""
from config import Settings

_settings = Settings.from_env()

# Listen where HOST/PORT say (default 0.0.0.0:8000).
bind = f"{_settings.host}:{_settings.port}"

# One worker process: each worker holds its own copy of the model (8.5 GB in float32).
workers = 1

# Threads let /health, the page and queued requests answer while a generation runs;
# the engine still generates one request at a time. THREADS should exceed QUEUE_SIZE + 1.
worker_class = "gthread"
threads = _settings.threads

# Never load the app in the master and fork it: PyTorch's thread pools do not survive fork.
preload_app = False

# A worker silent for this long is restarted; longer than the slowest CPU generation.
timeout = _settings.generation_timeout

# Time running requests get to finish on SIGTERM before the worker is stopped.
graceful_timeout = 30

# Seconds an idle keep-alive connection stays open (the page polls /health).
keepalive = 5

# Access log to stdout, errors to stderr.
accesslog = "-"
errorlog = "-"
loglevel = _settings.log_level.lower()
