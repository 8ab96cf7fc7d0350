"""The web console's static-file process: Envoy cannot serve files, so this small server sits
behind the gateway's catch-all route and serves the built single-page app (web/dist)."""
