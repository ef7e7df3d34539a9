# syncd container: dependencies in their own layer, non-root, SQL inside the package.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY syncd ./syncd
COPY sql ./sql
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app syncd
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY config.toml /app/config.toml
USER syncd
STOPSIGNAL SIGTERM
ENTRYPOINT ["syncd"]
CMD ["run"]
