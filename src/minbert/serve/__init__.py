"""The HTTP service over a trained run (http.py) and its dynamic batching (batching.py)."""
