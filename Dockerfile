# The hpo image: `hpo` is the entry point (create, worker, status, run, ...), and
# optuna-dashboard is installed with it. Used by docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app

# Dependencies first (read from pyproject.toml, at the versions CI tests: constraints.txt), so
# editing the code does not reinstall TensorFlow; then the package itself.
COPY pyproject.toml README.md constraints.txt ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep=chr(10))" > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt
COPY hpo ./hpo
RUN pip install --no-deps .

COPY studies ./studies

# Run as a user, with the folders the compose volumes mount owned by it.
RUN useradd --create-home --uid 1000 hpo \
    && mkdir -p /app/data /app/artifacts \
    && chown hpo:hpo /app/data /app/artifacts
USER hpo

ENTRYPOINT ["hpo"]
CMD ["--help"]
