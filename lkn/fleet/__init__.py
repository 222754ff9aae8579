"""The fleet of engines: the manager and its helpers (records, the wait queue, backends,
footprints, the idle policy), the pure scheduler and selector, balancing, breakers."""
