"""Outbound network clients: :class:`HttpClient`, Clarion's HTTP/1.1 client."""

from clarion.net.connection import Reply
from clarion.net.http1 import HttpClient

__all__ = ["HttpClient", "Reply"]
