"""Engine processes and the clients that speak each engine's API."""
