# sweeper on TensorFlow's official GPU image: one image for the API server (web page, TensorBoard)
# and for the workers; docker-compose.yml runs it as either.
ARG TENSORFLOW_VERSION=2.21.0
FROM tensorflow/tensorflow:${TENSORFLOW_VERSION}-gpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /opt/sweeper
# The dependencies first, so that a change in the code alone reuses this layer.
COPY pyproject.toml README.md ./
COPY sweeper/__init__.py sweeper/__init__.py
RUN python -m pip install --upgrade pip && python -m pip install ".[postgres]" && python -m pip uninstall -y sweeper
COPY sweeper sweeper
COPY api api
COPY workers workers
COPY cli cli
# TensorFlow comes with the base image; pip keeps it and installs the rest.
RUN python -m pip install --no-deps .

# Logs (shared with TensorBoard and every worker), and the SQLite file when no PostgreSQL is used.
VOLUME ["/runs", "/var/lib/sweeper"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["sweeper", "serve", "--host", "0.0.0.0", "--port", "8000", "--logdir", "/runs", \
     "--database-url", "sqlite:////var/lib/sweeper/sweeper.db"]
