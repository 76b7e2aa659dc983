"""The shop: Cleave's reference application."""
