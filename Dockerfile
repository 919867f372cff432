# meshsigner image: the Python package on a slim base, running as a non-root user.
# Build: docker build -t meshsigner:0.1.0 .   (not built in this project's CI: no container engine there)
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY signer ./signer
COPY policies ./policies
COPY bridge ./bridge
COPY proto ./proto
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels meshsigner && rm -rf /wheels
USER 65532:65532
EXPOSE 6443 6060 9402
ENTRYPOINT ["meshsigner"]
CMD ["serve"]
