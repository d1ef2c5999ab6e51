"""The claim script: acquire, merge, re-entrant claim, token-checked heartbeat and release, expiry."""

from __future__ import annotations

import pytest
import redis
from redis_server import wait_for

from broker import MalformedRecord
from broker.claims import STALE_QUEUED_CLAIM_MS, ClaimResult, Claims, claim_key

ARCHIVE = "reports/a.csv.sync"


@pytest.fixture
def claims(redis_client: redis.Redis) -> Claims:
    """Claim operations on the session's (emptied) Redis."""
    return Claims(redis_client)


def test_first_claim_acquires(claims: Claims, redis_client: redis.Redis) -> None:
    """A claim on a free archive is acquired, stores the token and gets the TTL asked for."""
    result = claims.claim(ARCHIVE, "t1", 60_000)
    assert result.ok
    assert result.merged == 0
    assert redis_client.hget(claim_key(ARCHIVE), "token") == "t1"
    assert 0 < redis_client.pttl(claim_key(ARCHIVE)) <= 60_000


def test_claim_while_held_is_merged_and_counted(claims: Claims, redis_client: redis.Redis) -> None:
    """Claims by other tokens are refused, counted as merged, and leave the holder and its TTL alone."""
    claims.claim(ARCHIVE, "t1", 60_000)
    assert claims.claim(ARCHIVE, "t2", 999_999).merged == 1
    result = claims.claim(ARCHIVE, "t3", 999_999)
    assert not result.ok
    assert result.merged == 2
    assert redis_client.hget(claim_key(ARCHIVE), "token") == "t1"
    assert redis_client.pttl(claim_key(ARCHIVE)) <= 60_000


def test_claim_is_reentrant_for_its_holder(claims: Claims, redis_client: redis.Redis) -> None:
    """The holder claiming again (the job starting) succeeds and takes the new TTL."""
    claims.claim(ARCHIVE, "t1", 60_000)
    claims.claim(ARCHIVE, "t2", 60_000)
    result = claims.claim(ARCHIVE, "t1", 600_000)
    assert result.ok
    assert result.merged == 1
    assert redis_client.pttl(claim_key(ARCHIVE)) > 60_000


def test_heartbeat_with_the_right_token_extends(claims: Claims, redis_client: redis.Redis) -> None:
    """A heartbeat by the holder resets the TTL."""
    claims.claim(ARCHIVE, "t1", 1_000)
    assert claims.heartbeat(ARCHIVE, "t1", 600_000).ok
    assert redis_client.pttl(claim_key(ARCHIVE)) > 1_000


def test_heartbeat_with_a_wrong_token_is_ignored(claims: Claims, redis_client: redis.Redis) -> None:
    """A heartbeat by another token changes nothing and reports so."""
    claims.claim(ARCHIVE, "t1", 1_000)
    result = claims.heartbeat(ARCHIVE, "t2", 600_000)
    assert not result.ok
    assert redis_client.pttl(claim_key(ARCHIVE)) <= 1_000
    assert redis_client.hget(claim_key(ARCHIVE), "token") == "t1"


def test_heartbeat_of_a_missing_claim_does_not_create_it(claims: Claims, redis_client: redis.Redis) -> None:
    """A heartbeat after the claim is gone does not bring it back."""
    assert not claims.heartbeat(ARCHIVE, "t1", 60_000).ok
    assert not redis_client.exists(claim_key(ARCHIVE))


def test_release_with_a_wrong_token_is_ignored(claims: Claims, redis_client: redis.Redis) -> None:
    """Only the holder can delete the claim (compare-and-delete)."""
    claims.claim(ARCHIVE, "t1", 60_000)
    assert not claims.release(ARCHIVE, "t2").ok
    assert redis_client.exists(claim_key(ARCHIVE))


def test_release_by_the_holder_deletes_and_reports_merges(claims: Claims, redis_client: redis.Redis) -> None:
    """The holder's release deletes the claim and returns how many requests were merged into it."""
    claims.claim(ARCHIVE, "t1", 60_000)
    claims.claim(ARCHIVE, "t2", 60_000)
    claims.claim(ARCHIVE, "t3", 60_000)
    result = claims.release(ARCHIVE, "t1")
    assert result.ok
    assert result.merged == 2
    assert not redis_client.exists(claim_key(ARCHIVE))
    assert claims.claim(ARCHIVE, "t4", 60_000).ok


def test_claim_expires_after_its_ttl(claims: Claims) -> None:
    """A claim nobody heartbeats expires, and then another token can take it."""
    claims.claim(ARCHIVE, "t1", 150)
    assert not claims.claim(ARCHIVE, "t2", 60_000).ok
    wait_for(lambda: claims.holder(ARCHIVE) is None, 10, what="claim expired")
    assert claims.claim(ARCHIVE, "t2", 60_000).ok
    assert not claims.heartbeat(ARCHIVE, "t1", 60_000).ok
    assert not claims.release(ARCHIVE, "t1").ok


def test_holder_shows_token_merges_and_ttl(claims: Claims) -> None:
    """``holder`` reports who holds the claim, how many requests merged, and the time left."""
    assert claims.holder(ARCHIVE) is None
    claims.claim(ARCHIVE, "t1", 60_000)
    claims.claim(ARCHIVE, "t2", 60_000)
    holder = claims.holder(ARCHIVE)
    assert holder is not None
    assert (holder.token, holder.merged) == ("t1", 1)
    assert 0 < holder.ttl_ms <= 60_000


def test_claims_of_different_archives_are_independent(claims: Claims) -> None:
    """Claiming one archive does not affect another."""
    assert claims.claim("a.sync", "t1", 60_000).ok
    assert claims.claim("b.sync", "t2", 60_000).ok


@pytest.mark.parametrize("ttl", [0, -5])
def test_script_refuses_a_non_positive_ttl(claims: Claims, redis_client: redis.Redis, ttl: int) -> None:
    """The script answers an error, and changes nothing, when asked for a TTL that is not positive."""
    with pytest.raises(redis.ResponseError, match="TTL must be a positive"):
        claims.claim(ARCHIVE, "t1", ttl)
    assert not redis_client.exists(claim_key(ARCHIVE))


def test_bad_keys_and_empty_tokens_are_refused(claims: Claims) -> None:
    """An unsafe archive key or an empty token never reaches Redis."""
    with pytest.raises(MalformedRecord):
        claims.claim("../x.sync", "t1", 1_000)
    with pytest.raises(ValueError, match="empty"):
        claims.claim(ARCHIVE, "", 1_000)


def test_claims_survive_a_script_cache_flush(claims: Claims, redis_client: redis.Redis) -> None:
    """After ``SCRIPT FLUSH`` (or a Redis restart) the registered script is loaded again transparently."""
    claims.claim(ARCHIVE, "t1", 60_000)
    redis_client.script_flush()
    assert claims.release(ARCHIVE, "t1").ok


def test_start_refuses_a_second_runner_of_the_same_request(claims: Claims) -> None:
    """A redelivered copy of a running job (same token, another runner) may not start; the first goes on."""
    assert claims.claim("a.sync", "t" * 32, 60_000).ok
    assert claims.start("a.sync", "t" * 32, "runner-1", 30_000).ok
    assert claims.start("a.sync", "t" * 32, "runner-1", 30_000).ok
    assert not claims.start("a.sync", "t" * 32, "runner-2", 30_000).ok
    assert not claims.start("a.sync", "u" * 32, "runner-3", 30_000).ok
    assert claims.heartbeat("a.sync", "t" * 32, 30_000).ok


def test_requeue_lets_the_retry_start_and_keeps_others_out(claims: Claims) -> None:
    """After ``requeue`` the same request starts again under a new runner while other requests merge."""
    assert claims.start("b.sync", "t" * 32, "runner-1", 30_000).ok
    assert claims.requeue("b.sync", "t" * 32, 90_000).ok
    assert not claims.claim("b.sync", "u" * 32, 60_000).ok
    assert claims.start("b.sync", "t" * 32, "runner-2", 30_000).ok
    assert claims.release("b.sync", "t" * 32).ok
    assert claims.holder("b.sync") is None


def _age_sent(redis_client: redis.Redis, archive: str, ms: int) -> None:
    # Pretend the holder's message was sent ``ms`` earlier (the script reads Redis server time).
    key = claim_key(archive)
    redis_client.hset(key, "sent", int(redis_client.hget(key, "sent")) - ms)


def test_a_merge_into_a_fresh_queued_claim_resends_nothing(claims: Claims) -> None:
    """Within ``STALE_QUEUED_CLAIM_MS`` of the send a merge is only counted."""
    assert claims.claim("s.sync", "t" * 32, 600_000).resend is None
    assert claims.claim("s.sync", "u" * 32, 600_000) == ClaimResult(False, 1, None)


def test_a_merge_into_a_stale_queued_claim_resends_the_holder_once(
    claims: Claims, redis_client: redis.Redis
) -> None:
    """A queued claim whose job has not started ``STALE_QUEUED_CLAIM_MS`` after its send: the next merge is
    told to re-send the holder's message (its token), and the merges after it are not, for another span."""
    assert claims.claim("s.sync", "t" * 32, 600_000).ok
    _age_sent(redis_client, "s.sync", STALE_QUEUED_CLAIM_MS)
    assert claims.claim("s.sync", "u" * 32, 600_000) == ClaimResult(False, 1, "t" * 32)
    assert claims.claim("s.sync", "v" * 32, 600_000) == ClaimResult(False, 2, None)
    _age_sent(redis_client, "s.sync", STALE_QUEUED_CLAIM_MS)
    assert claims.claim("s.sync", "v" * 32, 600_000) == ClaimResult(False, 3, "t" * 32)
    holder = claims.holder("s.sync")
    assert holder is not None
    assert holder.token == "t" * 32


def test_a_running_claim_is_never_stale(claims: Claims, redis_client: redis.Redis) -> None:
    """A started job holds a runner: however old the send, merges re-send nothing."""
    assert claims.claim("r.sync", "t" * 32, 600_000).ok
    assert claims.start("r.sync", "t" * 32, "runner-1", 30_000).ok
    _age_sent(redis_client, "r.sync", 10 * STALE_QUEUED_CLAIM_MS)
    assert claims.claim("r.sync", "u" * 32, 600_000).resend is None


def test_a_requeued_claim_is_not_stale_before_its_retry_is_due(
    claims: Claims, redis_client: redis.Redis
) -> None:
    """A retry waits out its countdown in the worker: its claim counts as sent when the retry is due."""
    assert claims.start("q.sync", "t" * 32, "runner-1", 30_000).ok
    assert claims.requeue("q.sync", "t" * 32, 90_000).ok
    _age_sent(redis_client, "q.sync", STALE_QUEUED_CLAIM_MS)
    assert claims.claim("q.sync", "u" * 32, 600_000).resend is None
    _age_sent(redis_client, "q.sync", 90_000)
    assert claims.claim("q.sync", "u" * 32, 600_000).resend == "t" * 32
