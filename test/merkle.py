#!/usr/bin/env python3
"""test/merkle.py: an independent check of audit.merkle_root().

Recomputes RFC 6962 Merkle tree roots in Python (hashlib only) over leaf sets
of every size from 0 to 70 and a few large ones, with random leaves, and
compares them with what the extension returns; then checks that changing,
dropping, adding or swapping one leaf changes the root, and that bad input is
refused with the documented SQLSTATEs.

Connects through the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE)
and creates the extension if it is missing. Needs Debian's python3-psycopg.
Last line: "merkle: N passed, M failed"; exit status 1 if anything failed.
"""
import hashlib
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from testkit import Results, info, psycopg as _load_psycopg  # noqa: E402

psycopg = _load_psycopg()

def mth(leaves):
    """RFC 6962 Merkle tree hash of already-hashed leaves (bytes of 32)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def main():
    rnd = random.Random(6962)
    res = Results()
    with psycopg.connect(autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS audit_db")

        def server_root(leaves):
            return bytes(conn.execute("SELECT audit.merkle_root(%s::bytea[])",
                                      (leaves,)).fetchone()[0])

        sizes = list(range(0, 71)) + [127, 128, 129, 1000, 4096, 5000]
        bad = []
        for n in sizes:
            leaves = [rnd.randbytes(32) for _ in range(n)]
            if server_root(leaves) != mth(leaves):
                bad.append(n)
        res.check(not bad, "merkle_root equals Python's RFC 6962 root for %d leaf-set sizes"
                  % len(sizes), "sizes that differ: %s" % bad)

        leaves = [rnd.randbytes(32) for _ in range(37)]
        root = mth(leaves)
        changed = list(leaves)
        changed[20] = bytes([leaves[20][0] ^ 1]) + leaves[20][1:]
        swapped = list(leaves)
        swapped[3], swapped[4] = swapped[4], swapped[3]
        for label, other in (("changed leaf", changed), ("dropped leaf", leaves[:-1]),
                             ("added leaf", leaves + [rnd.randbytes(32)]),
                             ("swapped leaves", swapped)):
            res.check(server_root(other) != root, "a %s changes the root" % label)

        # Interior nodes are domain-separated from leaves: a two-leaf tree's
        # root is not the hash of the concatenation.
        a, b = rnd.randbytes(32), rnd.randbytes(32)
        res.check(server_root([a, b]) != hashlib.sha256(a + b).digest(),
                  "interior nodes carry the 0x01 prefix")

        for label, sql, state in (
                ("a NULL leaf", "SELECT audit.merkle_root(ARRAY[NULL]::bytea[])", "22004"),
                ("a short leaf", "SELECT audit.merkle_root(ARRAY['\\x00'::bytea])", "22023"),
                ("a 2-D array", "SELECT audit.merkle_root(ARRAY[[sha256(''), sha256('')]])", "2202E")):
            got = None
            try:
                conn.execute(sql)
            except psycopg.Error as e:
                got = e.sqlstate
            res.check(got == state, "%s is refused with SQLSTATE %s" % (label, state),
                      "got %s" % got)

    return res.finish("merkle")


if __name__ == "__main__":
    sys.exit(main())
