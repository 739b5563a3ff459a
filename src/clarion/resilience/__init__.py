"""Policy around provider calls: retries (and, later, rate limits and circuit breakers)."""
