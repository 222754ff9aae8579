"""The response cache: the store, its HTTP ticket, stream assembly."""
