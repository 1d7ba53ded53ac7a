"""`vqad dashboard`: a live view of the line in the browser, over one small JSON API.

live.py reads the daemon's results; probe.py its Prometheus endpoint; app.py is the API and
serves the page in static/; server.py runs it. Neither torch nor train/ is imported.
"""
