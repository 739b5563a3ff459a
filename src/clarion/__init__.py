"""Clarion: a self-hosted, multi-channel notification platform."""

__version__ = "0.1.0"
