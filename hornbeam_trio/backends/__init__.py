"""Backends: where pub/sub messages travel and shared state lives (memory, Redis)."""
