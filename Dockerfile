# Loupe on a CPU: `docker build -t loupe .` from the repository's root. See the README, "In containers".
FROM python:3.11-slim-bookworm

# g++ compiles Loupe's native kernels on the first start (LINEAR_KERNEL=native); without it Loupe falls back
# to slower ones and says so.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
# torch from the PyTorch CPU index first: PyPI's wheel for Linux is the CUDA build, gigabytes larger. The
# requirements then find it installed. psycopg is the history's PostgreSQL driver (docs/history.md).
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        "torch==$(sed -n 's/^torch==\([^ ]*\).*/\1/p' requirements.txt)" \
    && pip install --no-cache-dir -r requirements.txt "psycopg[binary]>=3.1,<4"

COPY app.py model_loader.py gunicorn.conf.py ./
COPY loupe/ loupe/
COPY templates/ templates/
COPY static/ static/

# A user of its own: the service never runs as root. /data holds the history (DATA_DIR), /cache the
# downloaded model (HF_HOME) and the compiled kernels and prepared weights (KERNEL_CACHE_DIR); mount
# volumes there so they outlive the container.
RUN useradd --create-home --uid 10001 loupe \
    && mkdir -p /data /cache \
    && chown loupe:loupe /data /cache
USER loupe
ENV HOST=0.0.0.0 \
    PORT=8000 \
    DATA_DIR=/data \
    HF_HOME=/cache/huggingface \
    KERNEL_CACHE_DIR=/cache/kernels \
    PYTHONUNBUFFERED=1
VOLUME ["/data", "/cache"]
EXPOSE 8000

# MODEL_ID: a Hugging Face id (downloaded into /cache on the first start, about 4.3 GB) or a mounted
# directory, e.g. `-v /srv/models/qwen3-vl-2b:/models/qwen3-vl-2b:ro -e MODEL_ID=/models/qwen3-vl-2b`.
ENV MODEL_ID=Qwen/Qwen3-VL-2B-Instruct

# Healthy once /health says the model is loaded (it answers 503 while loading and when stopping). The
# start period covers a first start's download, kernel build and weight preparation.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20m --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# SIGTERM (Docker's stop signal) lets running generations finish for SHUTDOWN_GRACE seconds.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
