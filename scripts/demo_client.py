"""Stream an answer from a running lkn demo with the official openai SDK."""
from __future__ import annotations

import sys

import openai

base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/v1"
client = openai.OpenAI(base_url=base, api_key="x")
stream = client.chat.completions.create(
    model="smollm2", stream=True, max_tokens=64,
    messages=[{"role": "user", "content": "Give me three tips for a good night's sleep."}])
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
