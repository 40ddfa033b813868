# syntax=docker/dockerfile:1
# Images of docker-compose.yml, one build target per role:
#   mlflow - the MLflow tracking server with its Postgres (psycopg2) and S3/MinIO (boto3) clients;
#            also runs the one-shot service that creates the artifact bucket
#   ray    - the project on Ray with ray[default] (dashboard, job submission): head, workers, submit
#
#   docker build --target ray -t rscompress-ray .         (docker compose build does this for you)
#   docker build --target ray --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu ...
#                                                          (CPU-only torch wheels: a much smaller image)
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 1000 rsc

# --- MLflow tracking server -------------------------------------------------------------------
FROM base AS mlflow
ARG MLFLOW_VERSION=3.17.2
RUN pip install "mlflow==${MLFLOW_VERSION}" "psycopg2-binary>=2.9" "boto3>=1.34"
USER rsc
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]

# --- Ray node with the project (head, worker, job submission) ----------------------------------
FROM base AS ray
ARG RAY_VERSION=2.60.0
ARG MLFLOW_VERSION=3.17.2
# Empty: torch from PyPI (CUDA build). https://download.pytorch.org/whl/cpu: CPU-only wheels.
ARG TORCH_INDEX_URL=
WORKDIR /app
# Dependencies first (read from pyproject.toml), so that a code change does not reinstall torch.
# ray[default] explicitly: `ray job submit` needs the dashboard's job server on the head.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['export']))" > /tmp/requirements.txt \
 && pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /tmp/requirements.txt \
        "ray[default]==${RAY_VERSION}" "mlflow==${MLFLOW_VERSION}" \
 && rm /tmp/requirements.txt
COPY README.md ./
COPY rsc rsc
COPY costs costs
COPY spaces spaces
COPY search search
COPY tracking tracking
RUN pip install --no-deps -e . \
 && mkdir -p /cache /runs /data \
 && chown -R rsc:rsc /app /cache /runs
USER rsc
# /cache: decoded datasets and base checkpoints; /runs: the driver's --out (Optuna storage, reports)
ENV RSC_CACHE_DIR=/cache RAY_USAGE_STATS_ENABLED=0
EXPOSE 6379 8265
CMD ["ray", "start", "--head", "--block", "--dashboard-host=0.0.0.0"]
