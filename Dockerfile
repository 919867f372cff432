# meshsigner image for people who build with Docker/Podman. It follows image/build.sh (the engine-free build this
# project's CI runs and tests): Debian bookworm's python3, the dependencies of image/requirements.lock installed
# hash-checked from binary wheels only, meshsigner's wheel, user 65532, no pip or compiler in the final stage.
#   docker build -t meshsigner:0.1.0 .
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY image/requirements.lock image/requirements.lock
RUN python3 -m venv /opt/meshsigner \
 && /opt/meshsigner/bin/pip install --no-cache-dir --no-deps --require-hashes --only-binary=:all: \
      -r image/requirements.lock
COPY pyproject.toml README.md ./
COPY signer ./signer
COPY policies ./policies
COPY bridge ./bridge
COPY proto ./proto
COPY clocks ./clocks
RUN /opt/meshsigner/bin/pip install --no-cache-dir --no-deps .
# Same trims as image/build.sh: no installer in the image, no unused asyncio copy of the Kubernetes client.
ARG SITE=/opt/meshsigner/lib/python3.11/site-packages
RUN rm -rf $SITE/kubernetes/aio $SITE/pip $SITE/pip-* $SITE/setuptools $SITE/setuptools-* $SITE/pkg_resources \
      $SITE/_distutils_hack $SITE/distutils-precedence.pth /opt/meshsigner/bin/pip* \
 && /opt/meshsigner/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/meshsigner/lib

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && echo "meshsigner:x:65532:65532:meshsigner:/nonexistent:/usr/sbin/nologin" >>/etc/passwd \
 && echo "meshsigner:x:65532:" >>/etc/group
COPY --from=build /opt/meshsigner /opt/meshsigner
ENV PATH=/opt/meshsigner/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 6443 6060 9402
ENTRYPOINT ["/opt/meshsigner/bin/meshsigner"]
CMD ["serve"]
