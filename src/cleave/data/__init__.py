"""A service's data: its database, outbox, inbox and sagas."""
