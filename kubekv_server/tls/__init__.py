"""TLS for both ports: client certificates, CRLs, cipher suites, peer credentials."""
