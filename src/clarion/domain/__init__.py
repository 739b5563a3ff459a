"""Pure rules of the domain: no I/O here."""
