"""The shop's services: each owns its tables and talks to others only through contracts."""
