# The one image of the sync stack: mountd, the refresh workers and Flower all run it (compose.yaml).
# Build stage: build our wheel and fetch every dependency's wheel, so the runtime stage installs offline and
# nothing is downloaded when a container starts.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY sync_format ./sync_format
COPY broker ./broker
COPY workers ./workers
COPY mountd ./mountd
COPY syncctl ./syncctl
# constraints.txt: the releases the tests passed with, not whatever is newest on the day of the build.
RUN pip wheel --no-cache-dir --constraint constraints.txt --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# libseccomp2: pyseccomp (ctypes) builds the guest child's filter with it; redis-tools: redis-cli for people
# debugging the broker from inside the stack.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libseccomp2 redis-tools \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels sync-archives && rm -rf /wheels
# Every service runs as this unprivileged user, the worker included: as non-root, the guest's child gets its
# empty network namespace by creating a user namespace together with it (unshare(CLONE_NEWUSER|CLONE_NEWNET)),
# which needs no capability, only the worker seccomp profile (deploy/seccomp/worker.json) that lets unshare
# through. As root the same code would call unshare(CLONE_NEWNET) alone, which needs CAP_SYS_ADMIN.
# Its name is not "sync": Debian's base-passwd already has a user sync (uid 4) in every Debian image.
# /store is created here, owned by that user, so the named volume mounted on it starts out writable by it.
RUN groupadd --system --gid 10001 syncd \
    && useradd --system --uid 10001 --gid syncd --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin syncd \
    && mkdir /store /cache \
    && chown syncd:syncd /store /cache
USER 10001:10001
ENV SYNC_STORE=/store \
    SYNC_CACHE_DIR=/cache \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /store
EXPOSE 4918 5555 9808
CMD ["syncctl", "--help"]
