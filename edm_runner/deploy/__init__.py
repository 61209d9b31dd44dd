"""Deploying topologies: the values of the Helm charts in charts/ (``deploy.chart``)."""
