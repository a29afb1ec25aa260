"""Every gateway exception survives a pickle round trip with its message and fields."""
from __future__ import annotations

import pickle

import pytest

from sync_gateway import errors


def _all_errors():
    return [obj for obj in vars(errors).values()
            if isinstance(obj, type) and issubclass(obj, errors.GatewayError)]


@pytest.mark.parametrize("make", [
    lambda: errors.SourceError("ssh://h/r", "p/r1/history.jsonl", "connection lost"),
    lambda: errors.ServerUnavailable("POST /runs/log-batch -> HTTP 503", 503),
    lambda: errors.ServerUnreachable("cannot reach http://127.0.0.1:1: Connection refused"),
    lambda: errors.ServerRefused("POST /runs/create -> HTTP 400", 400, "INVALID_PARAMETER_VALUE"),
    lambda: errors.BatchRefused("3 of 1000 points refused for good", points=3, status=400, error_code="BAD"),
    lambda: errors.RunDeleted("the MLflow run r1 was deleted on the server"),
    lambda: errors.FileTooLarge("files/ckpt.pt was refused as too large"),
    lambda: errors.BundleError("bundle 7 is truncated"),
    lambda: errors.SshUnreachableError("ssh://h", "timed out"),
    lambda: errors.SshUnreachableError("ssh://h", "connection lost", "p/r/history.jsonl"),
    lambda: errors.SshHostKeyError("unknown host key", "h", 22, "SHA256:abc"),
    lambda: errors.SshAuthError("no key was accepted"),
    lambda: errors.SshConfigError("bad ProxyJump"),
    lambda: errors.ConfigError("server.url must start with http://"),
    lambda: errors.FormatError("run.json lacks the string field 'id'"),
    lambda: errors.LeaseHeld("another gateway holds the lease", holder="login2:4242"),
])
def test_round_trip_keeps_message_and_fields(make):
    err = make()
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err) and vars(back) == vars(err)


def test_every_exception_class_is_covered_by_the_base():
    for cls in _all_errors():
        assert cls.__reduce__ is errors.GatewayError.__reduce__, cls


def test_every_error_says_whether_it_is_safe_to_retry():
    """Retry safety is in the class: every concrete error is retryable or permanent, never both, never neither."""
    abstract = {errors.GatewayError, errors.RetryableError, errors.PermanentError, errors.ServerError}
    for cls in _all_errors():
        if cls in abstract:
            continue
        kinds = issubclass(cls, errors.RetryableError), issubclass(cls, errors.PermanentError)
        assert kinds in ((True, False), (False, True)), cls


def test_server_errors_read_their_retry_safety_from_the_class():
    assert errors.ServerUnavailable("x", 503).retryable and not errors.ServerUnavailable("x").unreachable
    assert errors.ServerUnreachable("x").retryable and errors.ServerUnreachable("x").unreachable
    refused = errors.BatchRefused("x", points=2, status=422)
    assert not refused.retryable and isinstance(refused, errors.ServerError) and refused.points == 2


def test_every_error_class_is_public():
    assert {c.__name__ for c in _all_errors()} == set(errors.__all__)
