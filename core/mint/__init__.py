"""Values vaultrelay mints: SAS tokens and the user delegation keys that sign them, kept in the state vault."""
