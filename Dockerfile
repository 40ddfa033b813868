# Image for the Ray head/worker services of docker-compose.yml: the project and its stack.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY rsc rsc
COPY spaces spaces
COPY search search
COPY tracking tracking
RUN pip install --upgrade pip && pip install -e ".[export]"
CMD ["python", "-m", "search.run", "--help"]
