"""SQL connection strings that authenticate with the managed identity (no password).

Formats: ADO.NET (`Authentication=Active Directory Managed Identity`, Microsoft.Data.SqlClient),
ODBC (`Authentication=ActiveDirectoryMsi`, ODBC Driver 18) and JDBC
(`authentication=ActiveDirectoryManagedIdentity`, mssql-jdbc).  A user-assigned identity is named
by its client id (`User Id=` / `UID=` / `user=`).
"""

from __future__ import annotations

from core.sources.fetched import SourceProblem

FORMATS = ("ado", "odbc", "jdbc")


def full_server_name(server: str, sql_suffix: str) -> str:
    """`myserver` -> `myserver.<suffix>`; a name with dots is taken as it is."""
    server = server.strip()
    if server.lower().startswith("tcp:"):
        server = server[4:]
    return server if "." in server else f"{server}.{sql_suffix}"


def sql_connection_string(server: str, database: str, fmt: str, *, client_id: str | None, sql_suffix: str) -> str:
    """The connection string for `server`/`database` in `fmt` (ado, odbc, jdbc).

    Raises:
        SourceProblem: unknown format.
    """
    host = full_server_name(server, sql_suffix)
    if fmt in ("ado", "connection_string"):
        parts = [
            f"Server=tcp:{host},1433", f"Database={database}",
            "Authentication=Active Directory Managed Identity",
        ]
        if client_id:
            parts.append(f"User Id={client_id}")
        parts += ["Encrypt=True", "TrustServerCertificate=False", "Connection Timeout=30"]
        return ";".join(parts) + ";"
    if fmt == "odbc":
        parts = [
            "Driver={ODBC Driver 18 for SQL Server}", f"Server=tcp:{host},1433", f"Database={database}",
            "Authentication=ActiveDirectoryMsi",
        ]
        if client_id:
            parts.append(f"UID={client_id}")
        parts += ["Encrypt=yes", "TrustServerCertificate=no", "Connection Timeout=30"]
        return ";".join(parts) + ";"
    if fmt == "jdbc":
        parts = [
            f"jdbc:sqlserver://{host}:1433", f"database={database}",
            "authentication=ActiveDirectoryManagedIdentity",
        ]
        if client_id:
            parts.append(f"user={client_id}")
        parts += ["encrypt=true", "trustServerCertificate=false", f"hostNameInCertificate=*.{host.split('.', 1)[-1]}", "loginTimeout=30"]
        return ";".join(parts) + ";"
    raise SourceProblem("invalid", f"unknown SQL connection string format {fmt!r}; expected one of {', '.join(FORMATS)}")
