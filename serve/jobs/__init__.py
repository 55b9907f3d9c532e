"""The job queue: its records, SQLite journal, the detached queue actor and the gateway's client for it."""
