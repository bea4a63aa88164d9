# revoc: one image for every process (serve, presign, publish, admin-api, admin commands).
# deploy/compose.yaml runs them together, each under its own least-privilege database role.
# Build: docker build -t revoc .    Run: docker run -e REVOC_DATABASE_URL=postgresql://... revoc serve
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY revoc ./revoc
COPY responder ./responder
COPY crl_publisher ./crl_publisher
COPY admin_api ./admin_api
COPY sql ./sql
RUN python -m venv /opt/revoc && /opt/revoc/bin/pip install --upgrade pip && /opt/revoc/bin/pip install .

FROM python:3.11-slim-bookworm
# openssl for operators checking answers from inside the container; tini reaps and forwards signals.
RUN apt-get update && apt-get install -y --no-install-recommends openssl tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/revoc --create-home revoc
COPY --from=build /opt/revoc /opt/revoc
ENV PATH=/opt/revoc/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    REVOC_HOME=/var/lib/revoc \
    REVOC_HOST=0.0.0.0 \
    REVOC_CRL_OUT=/var/lib/revoc/crl
USER revoc
WORKDIR /var/lib/revoc
# 8080: revoc serve (public); 8081: revoc admin-api (keep it off the public network)
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
ENTRYPOINT ["tini", "--", "revoc"]
CMD ["serve"]
