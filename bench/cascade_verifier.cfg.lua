-- bench/cascade.cfg.lua with a verifier as the signal: Qwen2.5-Coder-1.5B judges SmolLM2's
-- 16-token answer with one yes/no token, and its P(no) is the score. Run from the repository
-- root (the paths are relative to it), after scripts/bench-models.sh:
--   .venv/bin/python bench/cascade.py --config bench/cascade_verifier.cfg.lua --tag _verifier
dofile("bench/cascade.cfg.lua")

local small = models[1].homeostasis
small.verifier = "strong"
small.threshold = 0.107  -- the verifier's median P(no) on the calibration kinds (until the
                         -- analytic_share window holds 32 scores)
