"""The server's limits and their defaults, once: `mbedge serve`'s options and serve.admission.Settings
take them from here. Pure constants, so `mbedge --help` reads them without starlette or numpy.
The model's own options (threads, engine, max length, batch tokens) are the library's (runtime/options.py)."""

from __future__ import annotations

from modernbert_edge.runtime.options import DEFAULT_BATCH_TOKENS

BATCH_TOKENS = DEFAULT_BATCH_TOKENS  # tokens per batch the scheduler forms
MAX_WAIT_MS = 2.0  # how long a lone request waits for others to batch with
MAX_QUEUE_TOKENS = 65536  # tokens a model's queue holds; beyond it: 429
MAX_CLIENT_BATCH_SIZE = 64  # inputs one request may send; beyond it: 413
MAX_BODY_BYTES = 2 << 20  # largest request body; beyond it: 413
MAX_TOP_K = 100  # top_k of /answer, /fill_mask and /predict; beyond it: 422
MAX_MASKS = 16  # mask tokens in one /fill_mask input; beyond it: 413
BODY_TIMEOUT = 30.0  # seconds a request's body may take to arrive; beyond it: 408
