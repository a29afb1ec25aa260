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
    lambda: errors.ServerError("POST /runs/log-batch -> HTTP 503", 503, retryable=True),
    lambda: errors.ConfigError("server.url must start with http://"),
    lambda: errors.FormatError("run.json lacks the string field 'id'"),
    lambda: errors.LeaseHeld("another gateway holds the lease"),
])
def test_round_trip_keeps_message_and_fields(make):
    err = make()
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err) and vars(back) == vars(err)


def test_every_exception_class_is_covered_by_the_base():
    for cls in _all_errors():
        assert cls.__reduce__ is errors.GatewayError.__reduce__, cls
