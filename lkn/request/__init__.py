"""One request's path: the handler, sizing, forwarding, loading feedback, validation."""
