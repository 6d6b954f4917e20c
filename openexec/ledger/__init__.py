"""The witness ledger: every receipt appended to a transparency log anyone can audit offline.

The pure format library (no database, no network), after the C2SP specifications:

* ``merkle``: RFC 6962 hashing over tiles; roots, inclusion and consistency proofs and their
  RFC 9162 verification; building tiles (``TreeBuilder``) and rebuilding them for an audit
  (``TreeAccumulator``).
* ``tiles``: tlog-tiles paths and entry bundles.
* ``note``: signed notes, Ed25519 verifier keys, tlog-cosignature/v1 cosignatures.
* ``checkpoint``: tlog-checkpoint note bodies.
* ``proof``: tlog-proof, an entry's offline-verifiable inclusion proof.

The service's side (store, integrator, serving, audit, witness) builds on these.
"""
