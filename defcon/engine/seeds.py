"""Seeds for named secrets: every random choice of a run derives from (seed, name).

Low in the package (no defcon imports), so data, attacks, defenses and audits draw their secrets
the same way without importing each other.
"""

from __future__ import annotations

import hashlib


def derived_seed(seed: int, salt: str) -> int:
    """A seed for a named secret, so different secrets of one run never coincide."""
    digest = hashlib.sha256(f"{seed}:{salt}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
