"""Running apps: hosts, placements, workers and the supervisor."""
