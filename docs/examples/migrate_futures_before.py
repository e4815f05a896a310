"""Before: fanning work out with concurrent.futures.ProcessPoolExecutor."""

from __future__ import annotations

import concurrent.futures
import hashlib


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def main() -> None:
    blobs = [bytes([i]) * 1_000_000 for i in range(4)]
    with concurrent.futures.ProcessPoolExecutor(max_workers=2) as executor:
        one = executor.submit(digest, blobs[0]).result()
        print("one:", one)
        print("all:", list(executor.map(digest, blobs)))


if __name__ == "__main__":
    main()
