"""The FastAPI app, metrics and the in-process server runner."""
