"""`mbedge serve`: an HTTP server (starlette on uvicorn) that batches requests across clients.

    app.py       routes (TEI, OpenAI, fill-mask / tag / answer), request checks, metrics, access log
    batcher.py   one queue per model, the scheduler that forms batches, the model thread
    commands.py  `mbedge serve` and `mbedge loadtest`
    loadtest.py  closed-loop clients against a server on this machine

Needs the serve extra (uvicorn, starlette, prometheus-client); nothing here is imported by the runtime.
"""
