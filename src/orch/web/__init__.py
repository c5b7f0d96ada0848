"""`orch serve`: a read-only web dashboard over the snapshot; no writes, no locks."""
