"""OCI registries: the client, the credentials protocols it takes, digest pinning."""
