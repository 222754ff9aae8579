"""Inbound adapters: each client API (OpenAI Responses, Anthropic Messages, Ollama) as lkn's one
canonical (OpenAI) request, and the answer back (``base``)."""
