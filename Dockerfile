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
# With the s3 extra (boto3), so [artifacts] store = "s3://..." works in the image too.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(*p['dependencies'], *p['optional-dependencies']['s3'], sep=chr(10))" > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt
COPY hpo ./hpo
RUN pip install --no-deps .

COPY studies ./studies

# Run as a user; ./data caches the data fetched from the study's store (no volume needed).
RUN useradd --create-home --uid 1000 hpo \
    && mkdir -p /app/data /app/artifacts \
    && chown hpo:hpo /app/data /app/artifacts
USER hpo

ENTRYPOINT ["hpo"]
CMD ["--help"]
