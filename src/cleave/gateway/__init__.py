"""The HTTP edge: public routes mapped onto contract calls."""
