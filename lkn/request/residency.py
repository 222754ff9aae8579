"""A client's say over an engine's residency (Ollama's ``keep_alive``, its load and unload
calls). An engine is every client's, so only the operator's wish counts: an admin key, or
anyone on a box without keys; with client keys the model's ``idle_unload_s`` rules, and an
unload is refused (it is ``/models/unload``'s, admin-gated)."""
from __future__ import annotations

from lkn.config import ModelConfig, ServerConfig
from lkn.errors import Forbidden
from lkn.fleet import operations
from lkn.fleet.records import Demand
from lkn.request.caller import Caller
from lkn.request.inbound.base import Inbound
from lkn.request.lease import lease_demand
from lkn.request.outcome import Outcome
from lkn.request.state import GatewayState


def is_operator(caller: Caller, server: ServerConfig) -> bool:
    """Whether ``caller``'s residency wishes count (see the module's docstring)."""
    return caller.admin or not (server.requires_key or server.admin_keys)


async def load_or_unload(state: GatewayState, model: ModelConfig, inbound: Inbound,
                         outcome: Outcome, operator: bool) -> None:
    """Load ``model`` (through the scheduler, like a request) and keep it as the client asked;
    or, asked to keep it 0 s, unload it (an ``operator`` only)."""
    s = state.cfg.server
    if inbound.keep_alive_s == 0:
        if not operator:
            raise Forbidden("unloading a model takes the admin key (server.admin_keys); it "
                            "stops the model for every client")
        await operations.unload(state.manager, model.name,
                                timeout_s=s.request_timeout_s + s.stop_grace_s)
        return
    lease = await lease_demand(state, model, Demand(0, 0, min_ctx=inbound.min_ctx), outcome)
    if operator:  # anyone else's wish changes nothing
        lease.record.keep_alive_s = inbound.keep_alive_s
    lease.release()
