"""The configuration as frozen dataclasses: what ``build`` makes of the Lua file, and the names
(engines, balancing strategies, homeostasis modes) the checks accept."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from lkn.config.keys import KeyConfig, api_key_configs
from lkn.errors import ModelNotFound

log = logging.getLogger("lkn.config")

ENGINES = ("llamacpp", "sglang", "command", "remote")  # "backends" is set by the config itself
# what a backend table may not set: it belongs to the public model
PUBLIC_ONLY = ("name", "aliases", "backends", "fallbacks", "context_fallback", "homeostasis",
               "cache", "balance", "sticky_header", "breaker", "retries")
# set on the public model, they hold for each backend that does not set its own
INHERITED = ("parallel", "default_max_tokens", "idle_unload_s", "stop_grace_s",
             "tokenizer_path", "pinned", "health_timeout_s")
REMOTE_CTX = 131072  # a remote model's context when its config gives none
REMOTE_PARALLEL = 64  # requests lkn sends a remote model at once unless parallel says
HOMEOSTASIS_MODES = ("homeostatic", "passthrough")
INTERVENTIONS = ("verify_prompt", "escalate", "reasoning", "none")
PROBE_AGGREGATES = ("first", "mean", "max", "answer", "q50", "q75", "q90")
PROBE_SCORES = ("entropy", "margin", "surprise")
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
DEFAULT_VERIFIER_QUESTION = "Is your answer above correct? Reply with yes or no only."
DEFAULT_VERIFY_PROMPT = ("Think carefully, verify your assumptions, and reason step-by-step "
                         "before answering.")


STRATEGIES = ("round_robin", "least_connections", "random", "weighted", "sticky")  # backend balancing


@dataclass(frozen=True)
class BreakerPolicy:
    """A backend's circuit breaker settings (lkn.fleet.breaker runs it)."""
    failures: int = 5
    open_s: float = 30.0
    successes: int = 2


@dataclass(frozen=True)
class HomeostasisConfig:
    mode: str = "passthrough"
    threshold: float = 0.6
    top_k: int = 10
    # Measure before intervening: on SmolLM2-135M the verification prompt lowers accuracy
    # (bench/probe_value.py), so no intervention is applied until a model's config picks one.
    intervention: str = "none"
    verify_prompt: str = DEFAULT_VERIFY_PROMPT
    escalate_to: str | None = None
    reasoning_effort: str = "high"
    probe_timeout_s: float = 5.0
    probe_tokens: int = 1
    probe_aggregate: str = "first"
    # The per-token uncertainty the aggregate combines (probe.token_uncertainty).
    probe_score: str = "entropy"
    # Hold this share of requests ANALYTIC: the threshold follows the model's last
    # ``share_window`` scores (homeostat.share); None: the fixed ``threshold`` decides.
    analytic_share: float | None = None
    share_window: int = 256
    # Another model judges the probe's answer (homeostat.verifier): one token of it, yes or no;
    # its probability of "no" is the score. None: the probe's own token uncertainty is.
    verifier: str | None = None
    verifier_question: str = DEFAULT_VERIFIER_QUESTION


@dataclass(frozen=True)
class CacheConfig:
    """The response cache of one model (see lkn.cache): off unless a config turns it on."""
    enabled: bool = False
    ttl_s: float = 600.0
    max_mb: float = 64.0


@dataclass(frozen=True)
class UpstreamConfig:
    """A remote OpenAI-compatible server that answers for a model: no process, no VRAM."""
    url: str                         # its base URL, with the version: https://host/v1
    api_key_env: str | None = None   # the environment variable holding its key (never the key)
    model: str | None = None         # the model name it knows (default: lkn's name)
    timeout_s: float | None = None   # a whole non-streaming answer (default: request_timeout_s)
    health_path: str = "/models"     # checked before first use; "" = never
    api: str = "openai"              # or "anthropic": the Messages API, translated both ways


@dataclass(frozen=True)
class VariantConfig:
    ctx_size: int
    model_file: str
    gpu_layers: int
    cache_type: str = "f16"
    args: tuple[str, ...] = ()
    vram_mb: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    name: str
    engine: str
    variants: tuple[VariantConfig, ...]
    aliases: tuple[str, ...] = ()
    binary: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    embeddings: bool = False
    reranking: bool = False  # llama-server's /v1/rerank (--reranking; a reranker's GGUF)
    # Who makes a forced tool call (tool_choice "required" or a named function) happen:
    # "engine", "lkn" (a JSON schema on the answer: lkn.relay.forced_tools) or "auto" (lkn
    # where the engine's chat template does not render tools, as llama-server reports it).
    tool_calls: str = "auto"
    parallel: int = 1
    default_max_tokens: int = 512
    homeostasis: HomeostasisConfig = field(default_factory=HomeostasisConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    reasoning: str = "engine"
    # SGLang specifics
    reasoning_parser: str | None = None  # SGLang's --reasoning-parser, for reasoning = "engine"
    python: str | None = None
    tokenizer_path: str | None = None
    mem_fraction_static: float | None = None
    health_timeout_s: float = 20.0
    sleep_when_idle_s: float | None = None
    # Stop the engine (llama-server) after this long without a request; 0 = never. None:
    # the server's idle_unload_s.
    idle_unload_s: float | None = None
    # None: the server's stop_grace_s, raised to what the engine needs (EngineClient)
    stop_grace_s: float | None = None
    upstream: UpstreamConfig | None = None  # a remote server instead of an engine process
    # engine = "command": any OpenAI-compatible server, from this argv (placeholders {port},
    # {model_file}, {ctx_size}); ready when health_path answers 200
    command: tuple[str, ...] = ()
    health_path: str = "/health"
    # engine = "command": the environment variable that hands the engine lkn's per-start key
    # (None: the command gets none and lkn calls it without one)
    engine_key_env: str | None = None
    # Several backends for one public model: each a model of its own (``parent`` names the
    # public one), balanced, with a circuit breaker each, retried before the first byte.
    backends: tuple[ModelConfig, ...] = ()
    parent: str | None = None
    # the public model's INHERITED settings as written (for backends added at runtime)
    backend_defaults: tuple[tuple[str, Any], ...] = ()
    weight: int = 1
    balance: str = "least_connections"
    sticky_header: str | None = None  # sticky: hash this header (default: the body's "user")
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    retries: int = 2  # other backends tried after a failure before the first byte
    fallbacks: tuple[str, ...] = ()   # models tried in order when this one fails before answering
    context_fallback: str | None = None  # the model for requests no variant of this one holds
    pinned: bool = False          # never evicted, never unloaded for idleness
    loading_events: bool = False  # stream start/swap progress as reasoning_content deltas

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def variant_name(self, variant: VariantConfig) -> str:
        """A variant's name, for people and for the running config's tables: ``model@ctx``."""
        return f"{self.name}@{variant.ctx_size}"

    @property
    def engine_models(self) -> tuple[ModelConfig, ...]:
        """What runs: its backends, or the model itself."""
        return self.backends or (self,)

    @property
    def engine_tokenizes(self) -> bool:
        """Its engine counts tokens itself (``/tokenize``), and lkn reads its tokenizer from
        its model file: llama-server and SGLang. Others count only with ``tokenizer_path``."""
        return self.engine in ("llamacpp", "sglang")

    @property
    def public(self) -> str:
        """The name clients use (a backend's parent)."""
        return self.parent or self.name


ACTIVITY_CAPTURE = ("off", "errors", "all")


@dataclass(frozen=True)
class ActivityConfig:
    """The durable activity log (``<state_dir>/activity.sqlite3``): one row per request."""
    enabled: bool = True
    retention_days: float = 30.0  # 0: keep every row
    capture: str = "off"   # request bodies kept: off, errors (status >= 400) or all (admins read)
    capture_kb: int = 16   # of each body


@dataclass(frozen=True)
class ServerConfig:
    listen: tuple[str, ...] = ("127.0.0.1:8080",)
    api_keys: tuple[str, ...] = ()
    # every client key: server.keys, then api_keys as key-1, key-2, … (lkn.config.keys); left
    # empty, it is made from api_keys, so a ServerConfig built in code has its keys too
    keys: tuple[KeyConfig, ...] = ()
    request_timeout_s: float = 600.0
    stream_idle_timeout_s: float = 300.0
    engine_start_timeout_s: float = 120.0
    stop_grace_s: float = 10.0
    # Below Linux's ephemeral range (32768-60999): there an outgoing connection of lkn's own can
    # take an engine's port between the check that it is free and the engine's bind.
    port_range: tuple[int, int] = (20100, 20899)
    log_dir: str = "logs"
    max_loaded_engines: int = 0
    vram_budget_mb: int = 8192
    vram_overhead_mb: int = 256
    max_queue_wait_s: float = 30.0
    swap_cost_s: float = 10.0  # an engine's start cost before lkn has timed one (then learned)
    max_queue_per_model: int = 64
    queue_timeout_s: float = 300.0
    shutdown_drain_s: float = 30.0
    token_margin: int = 16
    # Failure policy per engine variant (see lkn.fleet.failures): restart on demand after a backoff
    # of restart_backoff_s * 2**(n-1), capped; FAILED after max_start_failures in a row, then
    # one more try every failed_start_cooldown_s.
    restart_backoff_s: float = 1.0
    restart_backoff_max_s: float = 30.0
    max_start_failures: int = 5
    failed_start_cooldown_s: float = 60.0
    state_dir: str | None = None  # None: $STATE_DIRECTORY (systemd) or ~/.local/state/lkn
    idle_unload_s: float = 0.0    # models' default: stop engines idle this long (0 = never)
    log_max_mb: float = 50.0      # an engine's log file rotates past this size (0: never)
    log_keep: int = 3             # rotated engine log files kept
    admin_keys: tuple[str, ...] = ()   # /admin and /status; none: the admin API is loopback-only
    preload: tuple[str, ...] = ()      # models started at boot and after every reload
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call lkn ("*": any)
    # The trust boundary (README "Security"):
    # upstream hosts a runtime backend (POST /admin/models/{m}/backends) may point at: CIDRs
    # ("10.0.0.0/8") or host name patterns ("gpu*.lan"); empty: runtime backends only with
    # admin_keys set, and then only to hosts the config file's upstreams already use
    runtime_upstreams: tuple[str, ...] = ()
    # addresses (CIDRs) of reverse proxies whose X-Forwarded-For/Forwarded names the client;
    # a loopback request through any other proxy is not trusted as local
    trusted_proxies: tuple[str, ...] = ()
    metrics_public: bool = False   # /metrics open even when keys are set (for scrapers)
    # more names of this box a key-less lkn answers under ("gpubox.lan", "*.lan"): any other
    # Host name is refused (DNS rebinding)
    allowed_hosts: tuple[str, ...] = ()
    body_timeout_s: float = 60.0   # a request's headers and body must arrive within this
    max_body_mb: float = 16.0      # the largest request body (413 beyond)
    max_in_flight: int = 256       # requests read or served at once (503 + Retry-After beyond)
    # OpenAI Responses kept for previous_response_id (per API key, in memory): how many, and
    # for how long; 0 entries: none kept (store is then refused with a 400)
    responses_store_size: int = 1000
    responses_store_age_s: float = 3600.0
    responses_store_mb: float = 64.0
    activity: ActivityConfig = field(default_factory=ActivityConfig)
    homeostasis: HomeostasisConfig = field(default_factory=HomeostasisConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)  # every model's default

    def __post_init__(self) -> None:
        if not self.keys and self.api_keys:
            object.__setattr__(self, "keys", api_key_configs(self.api_keys))

    @property
    def requires_key(self) -> bool:
        """The OpenAI routes take only a client key (``keys``, the flat ones included)."""
        return bool(self.keys)


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    models: tuple[ModelConfig, ...]
    path: str = ""

    def resolve(self, name: str) -> ModelConfig | None:
        for model in self.models:
            if name in model.names:
                return model
        return None

    def require(self, name: str) -> ModelConfig:
        """The model (or alias) ``name``; a 404 naming what this gateway serves otherwise."""
        model = self.resolve(name)
        if model is None:
            known = ", ".join(n for m in self.models for n in m.names)
            raise ModelNotFound(f"The model '{name}' does not exist; this gateway serves: {known}",
                                param="model")
        return model

    def in_force(self, model: ModelConfig) -> ModelConfig:
        """Where a request's model, from the config generation it arrived with, meets this
        config. Unchanged: itself. Changed by a reload: the model of that name now, so the
        request is re-planned against its variants and backends (another variant, or
        ContextLengthExceeded when none holds it any more). Removed: ModelNotFound, a 404."""
        current = self.resolve(model.name)
        if current is model:
            return model
        if current is None:
            raise ModelNotFound(f"The model '{model.name}' was removed from the config while "
                                f"this request was being prepared", param="model")
        if current.variants != model.variants or current.backends != model.backends:
            log.info("model %s changed in a reload while a request was being prepared; it is "
                     "planned against the new config", model.name)
        return current
