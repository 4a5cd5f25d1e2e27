"""`make demo`: vaultrelay's main job on the embedded local Azure."""
