"""The request-response side of a running service (issue 10, docs/design/http.md): one aiohttp
server per service that declares ``http:``, answering state queries (routed to the instance
that owns the key), event ingestion, ``/healthz``, ``/readyz`` and Prometheus ``/metrics``.

``serve.server.attach`` is the entry point: ``runtime.run_services(..., attach=attach)`` enters
it per service. Nothing below the CLI imports serve (the import contract ``serve-top`` in
pyproject.toml). Nothing is imported here, so importing one module of serve loads only it.
"""
