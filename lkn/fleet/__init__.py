"""The fleet of engines: the manager, its records, the pure scheduler and selector, balancing, breakers."""
