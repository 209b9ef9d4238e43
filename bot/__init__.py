"""Composition root: settings, Application wiring, polling/webhook runners, the HTTP server."""
