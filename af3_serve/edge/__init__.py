"""The HTTP edge: errors, body limits, request ids and logs, API keys."""
