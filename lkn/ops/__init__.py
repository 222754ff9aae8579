"""Operations: events, metrics, usage, traffic, requests in flight, notifications. Imports nothing of lkn but its leaves."""
