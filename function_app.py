"""Azure Functions entry point: registers the blueprints, nothing else.

Each blueprint in `functions/` parses its trigger, calls `core`, and maps errors to responses.
Heavy Azure SDK imports happen on first use, not here, to keep cold starts short.
"""

import azure.functions as func

from functions.health import bp as health_bp
from functions.http_api import bp as http_api_bp
from functions.keyvault_events import bp as keyvault_events_bp
from functions.scheduled import bp as scheduled_bp
from functions.work_queue import bp as work_queue_bp

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(health_bp)
app.register_functions(http_api_bp)
app.register_functions(scheduled_bp)
app.register_functions(keyvault_events_bp)
app.register_functions(work_queue_bp)
