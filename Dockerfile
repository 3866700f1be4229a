# One image for web and workers. ENGINE=gpu installs vLLM (CUDA) for the gpu worker,
# ENGINE=none keeps web and the default worker light.
FROM python:3.11-slim-bookworm

ARG ENGINE=none
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 DEBUG=0
WORKDIR /app

RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client curl \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md ./
COPY parity parity
COPY dashboard dashboard
COPY workers workers
COPY templates templates
COPY static static
COPY manage.py ./
RUN if [ "$ENGINE" = "gpu" ]; then pip install -e ".[gpu]"; else pip install -e .; fi \
    && pip uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
RUN SECRET_KEY=build-only python manage.py collectstatic --noinput

EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "dashboard.asgi:application"]
