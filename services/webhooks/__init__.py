"""Partner webhooks: a generation's `started` and `completed` events, POSTed to the endpoint its
API key or its CreateGeneration named, signed as the Standard Webhooks specification says.

- `endpoints`: the events, the signing secret's format, and the rules a registered URL obeys.
- `outbox`: the PostgreSQL outbox (migration 0013); rows are inserted in the transaction of the
  change they report and delivered later, so none is lost on a restart.
- `guard`: the SSRF guard: the destination is resolved once, checked, and connected to.
- `sender`: one signed POST. `deliverer`: the process's loop: claim due rows, send, record,
  retry with backoff for 24 hours. `__main__`: its composition root (`python -m services.webhooks`).
"""
