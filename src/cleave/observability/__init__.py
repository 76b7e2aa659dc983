"""Seeing the whole system: traces, metrics, logs, the dashboard."""
