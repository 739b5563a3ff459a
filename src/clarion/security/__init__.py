"""API keys, webhook signatures and network guards."""
