"""Plain-HTTP surfaces of the client port: the JSON gateway, health probes, CORS/host checks."""
