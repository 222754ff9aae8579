"""Relaying an engine's answer: the SSE relay, reasoning separation, the thinking relay."""
