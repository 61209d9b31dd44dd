"""The pieces of the ``call`` step (operators/call.py), each small and tested on its own:
``limits`` (token bucket, in-flight cap, quota: a named resource), ``retry`` (which answers
retry, backoff from Retry-After), ``breaker`` (a circuit breaker per endpoint), ``cache`` (TTL +
LRU responses) and ``client`` (one attempt-loop over an aiohttp session). Registers nothing.
"""
