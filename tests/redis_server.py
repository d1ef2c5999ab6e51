"""Re-exports ``support.redis_server`` and ``support.polling`` under the old import name ``redis_server``."""

from support.polling import free_port, wait_for
from support.redis_server import START_TIMEOUT, STOP_TIMEOUT, RedisServer

__all__ = ["START_TIMEOUT", "STOP_TIMEOUT", "RedisServer", "free_port", "wait_for"]
