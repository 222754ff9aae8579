"""The aiohttp application: routes, middleware, status, admin, reload, serve, the UI."""
