"""Operations: the health endpoint and Prometheus metrics under ``/.well-known/sync/``."""
