"""Engine processes and the clients that speak each engine's API.

The modules, each of one concept::

    base            EngineClient: one kind of engine (argv, readiness, tokens, probe, errors)
    llamacpp        llama-server          sglang     SGLang's launch_server
    command         any server from an argv
    remote          a server elsewhere (RemoteEngine) and its stand-in process (RemoteProcess)
    anthropic       Anthropic's Messages API, translated both ways (anthropic_blocks: the
                    tables both directions share, the inbound adapter too)
    states          State and the table of legal transitions
    handle          EngineHandle: what the layers above hold of a process
    process         EngineProcess: one child's lifecycle, under its own lock
    proctree        ports, process trees held by identity, the parent-death signal
    registry        the engine processes on disk, so that none outlives lkn
    identity        a process by boot id and start ticks; staleness: the sweep's pure rules
    logs            an engine's output: a bounded ring mirrored to a private file
    child_env       an engine child's allow-listed environment
    upstream        a request's timeouts and body on its way to the engine
    tokens, bound   counting prompt tokens; a cheap upper bound first
    chat_template   a model's chat template from its files
    gguf, vram      GGUF metadata; the VRAM estimate of a variant
    footprint       the memory footprint an engine reports (footprint_store: kept on disk)
    gpu             GPU memory readings
"""
