"""The disk layout: manifests, staging, promotion, locks, archives, recovery, expect checks, run records."""
