"""The request-response side of a running instance (aiohttp): state queries with routing,
ingestion, health and Prometheus metrics."""
