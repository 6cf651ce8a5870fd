"""`mbedge serve`: an HTTP server (starlette on uvicorn) that batches requests across clients.

    app.py       the app: GET routes, auth, dispatch to the POST routes, access log, lifespan
    routes.py    the POST routes (TEI, the Inference API's bodies, OpenAI, fill-mask / tag / answer), POST /
                 by the model's task, the table of routes and their fields
    admission.py the path every model route shares, a request's inputs to its rows: pick the model,
                 encode and count once, check the limits, queue, await; the server's Settings and State
    requests.py  the body and its fields (422 naming the field), the error shapes
    metrics.py   Prometheus metrics: requests, batches per model and task, queues, process
    batcher.py   one queue per model, the scheduler that forms batches, the model thread
    commands.py  `mbedge serve` and `mbedge loadtest`
    loadtest.py  closed-loop clients against a server on this machine

Needs the serve extra (uvicorn, starlette, prometheus-client); nothing here is imported by the runtime.
"""
