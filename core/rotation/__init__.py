"""Rotation: phased records for account keys and tagged Key Vault secrets."""
