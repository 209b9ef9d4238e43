# The bot as a container image: `docker build -t comfy-telegram-bot .` (compose.yaml does it).
# Slim Python base, a non-root user, the SQLite database on the /data volume, and a health
# check on /healthz (webhook mode) or on the running bot's database lock (long polling).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATABASE_PATH=/data/bot.sqlite3 \
    LISTEN_HOST=0.0.0.0 \
    LISTEN_PORT=8080

RUN groupadd --system --gid 10001 bot \
    && useradd --system --uid 10001 --gid bot --home-dir /app --shell /usr/sbin/nologin bot

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY handlers ./handlers
COPY generation ./generation
COPY storage ./storage
COPY locales ./locales
# Editable, as in the README: the code runs from /app, next to locales/ (read from there).
RUN pip install --no-cache-dir -e . \
    && mkdir -p /data \
    && chown bot:bot /data

VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080
# SIGTERM lets runs under way finish and persists the rest (see README "Reliability").
STOPSIGNAL SIGTERM

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "bot.healthcheck"]

# The README's run command.
CMD ["python", "-m", "bot"]
