"""Transports: how calls and events travel (see ``base`` for the protocols)."""
