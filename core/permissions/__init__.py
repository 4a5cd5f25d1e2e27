"""What vaultrelay needs in Azure: the matrix, built-in roles, runtime hints, the report and Bicep parameters."""
