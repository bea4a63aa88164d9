# revoc: one image for every process (serve, presign, publish, admin-api, admin commands).
# deploy/compose.yaml runs them together, each under its own least-privilege database role;
# deploy/podman-check builds and runs this image with podman and checks every process.
# Build: docker build -t revoc .    Run: docker run -e REVOC_DATABASE_URL=postgresql://... revoc serve
#
# Stage 1 installs the wheel and its dependencies into a virtualenv (every dependency ships a
# manylinux wheel, so no compiler is needed even here); stage 2 copies only that virtualenv.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY revoc ./revoc
COPY responder ./responder
COPY crl_publisher ./crl_publisher
COPY admin_api ./admin_api
COPY sql ./sql
# --only-binary: a dependency without a wheel fails the build rather than compiling here.
# The `hsm` extra (python-pkcs11) lets --key/--ocsp-key be pkcs11: URIs; mount the vendor's
# PKCS#11 module and set REVOC_PKCS11_MODULE. pip and setuptools are removed afterwards: the
# running service never installs anything.
RUN python -m venv /opt/revoc \
    && /opt/revoc/bin/pip install --upgrade pip \
    && /opt/revoc/bin/pip install --only-binary :all: --no-binary revoc '.[hsm]' \
    && /opt/revoc/bin/pip uninstall -y -q setuptools pip

FROM python:3.11-slim-bookworm
# openssl for operators checking answers from inside the container; tini reaps and forwards
# signals (revoc exits 143 on SIGTERM, after stopping in order).
RUN apt-get update && apt-get install -y --no-install-recommends openssl tini \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && groupadd --gid 10001 revoc \
    && useradd --uid 10001 --gid 10001 --no-log-init --shell /usr/sbin/nologin \
               --home-dir /var/lib/revoc --create-home revoc
COPY --from=build /opt/revoc /opt/revoc
COPY deploy/healthcheck /usr/local/bin/revoc-healthcheck
ENV PATH=/opt/revoc/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    REVOC_HOME=/var/lib/revoc \
    REVOC_HOST=0.0.0.0 \
    REVOC_CRL_OUT=/var/lib/revoc/crl
USER 10001:10001
WORKDIR /var/lib/revoc
# 8080: revoc serve (public); 8081: revoc admin-api (keep it off the public network)
EXPOSE 8080 8081
# serve: /healthz; admin-api: /openapi.json; presign, publish: alive (see deploy/healthcheck)
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/revoc-healthcheck"]
ENTRYPOINT ["tini", "--", "revoc"]
CMD ["serve"]
