"""Azure SDK clients behind narrow interfaces (built by the client factory, passed in)."""
