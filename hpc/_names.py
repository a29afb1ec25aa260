"""Readable random run names (adjective-noun-number, as W&B does) and unique run ids."""
from __future__ import annotations

import secrets
import string

__all__ = ["random_name", "random_id"]

_ADJECTIVES = (
    "amber", "bold", "brave", "bright", "calm", "clever", "cosmic", "crisp", "curious", "daring", "dashing",
    "eager", "earnest", "fancy", "fearless", "fiery", "fluent", "gentle", "glad", "golden", "graceful",
    "happy", "hardy", "honest", "jolly", "keen", "kind", "lively", "lucky", "lunar", "mellow", "mighty",
    "misty", "noble", "polar", "proud", "quick", "quiet", "rapid", "royal", "rustic", "serene", "sharp",
    "silent", "silver", "smooth", "solar", "stellar", "still", "sunny", "swift", "tidy", "vivid", "warm",
    "wise", "witty", "young", "zesty",
)
_NOUNS = (
    "aurora", "badger", "breeze", "brook", "canyon", "cedar", "cloud", "comet", "coral", "crane", "dawn",
    "delta", "dune", "eagle", "ember", "falcon", "fern", "field", "fjord", "forest", "galaxy", "glacier",
    "grove", "harbor", "hawk", "heron", "island", "lake", "lynx", "meadow", "meteor", "moon", "mountain",
    "nebula", "ocean", "orbit", "otter", "owl", "panda", "pine", "planet", "pond", "prairie", "puma",
    "quasar", "rain", "river", "salmon", "sea", "shadow", "sky", "snow", "sparrow", "star", "storm", "sun",
    "thunder", "tiger", "valley", "wave", "willow", "wind", "wolf",
)
_ID_ALPHABET = string.ascii_lowercase + string.digits


def random_name() -> str:
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.randbelow(1000)}"


def random_id(length: int = 8) -> str:
    """8 characters of [a-z0-9]: 2.8e12 ids, unique in practice; the caller still checks the directory."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))
