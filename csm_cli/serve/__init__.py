"""`csm serve`: the HTTP and WebSocket speech server, Wyoming for Home Assistant, the stream scheduler they share
and the response encoders."""
