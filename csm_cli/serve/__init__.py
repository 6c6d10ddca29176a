"""`csm serve`: the HTTP and WebSocket speech server, its stream scheduler and response encoders."""
