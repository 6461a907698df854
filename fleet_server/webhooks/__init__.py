"""Webhooks: events (rollout aborted, device offline, drift, job failed, model registered) delivered as signed
JSON to URLs an admin registers, through an outbox table: at least once, retried with backoff, across restarts."""
