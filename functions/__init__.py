"""Azure Functions blueprints, one per trigger kind: thin shells over `core`.

Loading them (as function_app.py does) first sets the app's log hygiene (`core.logs`): the Azure
SDK's and urllib3's loggers at `$VAULTRELAY_SDK_LOG_LEVEL` (default WARNING), since the Python
worker forwards every logger's records at INFO and above to Application Insights, and credentials
(SAS signatures, tokens, client secrets) redacted from every record at any level.
"""

from core.logs import configure_logging

configure_logging()
