# samsearch on an NVIDIA GPU: the `worker` service of docker-compose.yml (and every other samsearch
# command: `docker compose run --rm cli <command>`). PyTorch, CUDA and cuDNN come with the base image.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SAMSEARCH_HOME=/var/lib/samsearch \
    SAMSEARCH_CACHE=/cache

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY samsearch ./samsearch
COPY migrations ./migrations
# Editable install: the schema migrations are read from /app/migrations beside the package.
RUN pip install -e . \
 && useradd --create-home --uid 1000 samsearch \
 && mkdir -p /var/lib/samsearch /cache \
 && chown samsearch /var/lib/samsearch /cache
USER samsearch

ENTRYPOINT ["samsearch"]
CMD ["worker"]
