"""Azure at the edge: the client factory, HTTP tuning, transport, retry and the ARM calls made without an SDK."""
