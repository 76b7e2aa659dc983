"""The shop's contracts: what each service offers. Callers import these, never the services."""
