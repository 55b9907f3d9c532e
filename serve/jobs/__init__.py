"""The job queue: its records, journal (SQLite or Redis), the detached queue actor and the gateway's client for it."""
