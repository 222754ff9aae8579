"""The aiohttp application: GatewayServer (server.py), its app keys (keys.py, a leaf), the
middleware, the OpenAI routes, the read-only routes and their payloads, the admin actions and
streams, reload, the event loop and the dashboard's static files."""
