"""Model -> processor DAG (dag.py) and drawings (draw.py)."""
