"""Stream results from an endless input, with bounded memory, and stop early."""

from __future__ import annotations

import hashlib
import itertools

import trio

import triopool


def proof_of_work(nonce: int) -> tuple[int, str]:
    """Hash a nonce many times over (CPU-bound: runs in a worker)."""
    digest = str(nonce).encode()
    for _ in range(2_000):
        digest = hashlib.sha256(digest).digest()
    return nonce, digest.hex()


async def main() -> None:
    nonces = itertools.count()  # endless: imap pulls from it only as needed
    # At most 8 nonces are taken ahead of the results received; leaving the
    # imap block cancels whatever still runs.
    async with (
        triopool.open_pool(2) as pool,
        pool.imap(proof_of_work, nonces, chunksize=4, max_in_flight=8) as results,
    ):
        async for nonce, digest in results:
            if digest.startswith("00"):
                print(f"nonce {nonce} gives {digest[:16]}...")
                break
    # imap took at most 8 nonces beyond the results received.
    taken_beyond = next(nonces) - (nonce + 1)
    print(f"taken beyond the answer: at most 8: {taken_beyond <= 8}")


if __name__ == "__main__":
    trio.run(main)
