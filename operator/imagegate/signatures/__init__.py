"""Sigstore and cosign signatures: finding them in a registry and verifying them."""
