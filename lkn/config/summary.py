"""What a loaded configuration says, for people: the startup summary and missing model files."""
from __future__ import annotations

import os

from lkn.config.schema import Config
from lkn.config.upstreams import redact_url


def missing_model_files(cfg: Config) -> list[str]:
    """``model@ctx: path`` for every variant whose model file does not exist."""
    return [f"{m.variant_name(v)}: {v.model_file}" for p in cfg.models
            for m in p.engine_models for v in m.variants
            if m.upstream is None and not (m.engine == "command" and not v.model_file)
            and not os.path.exists(v.model_file)]


def summary(cfg: Config) -> str:
    s = cfg.server
    lines = [f"config {cfg.path}",
             f"  listen {', '.join(s.listen)}; api keys: {len(s.keys) or 'none'}; "
             f"VRAM budget {s.vram_budget_mb} MiB; "
             f"engine ports {s.port_range[0]}-{s.port_range[1]}",
             f"  homeostasis {s.homeostasis.mode} (threshold {s.homeostasis.threshold}, "
             f"top_k {s.homeostasis.top_k}, intervention {s.homeostasis.intervention})"]
    for m in cfg.models:
        aliases = f" (aliases: {', '.join(m.aliases)})" if m.aliases else ""
        lines.append(f"  model {m.name}{aliases}: {m.engine}, "
                     f"contexts {', '.join(str(v.ctx_size) for v in m.variants)}")
        if m.backends:
            lines.append(f"    {len(m.backends)} backends, {m.balance}: "
                         f"{', '.join(b.name for b in m.backends)}")
            continue
        if m.upstream is not None:
            key = f", key from ${m.upstream.api_key_env}" if m.upstream.api_key_env else ""
            lines.append(f"    upstream {redact_url(m.upstream.url)} as "
                         f"{m.upstream.model or m.name}{key}")
            continue
        for v in m.variants:
            exists = "" if os.path.exists(v.model_file) else "  [file missing]"
            lines.append(f"    ctx {v.ctx_size}: {v.model_file}{exists}")
    return "\n".join(lines)
