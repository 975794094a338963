"""Diagnostic target: a WSGI function with no framework that reads the upload and answers a constant JSON.

Beside the bare Flask app (``bench/bare_app.py``) under the same worker, it shows what Flask and Werkzeug's form
parsing cost per request, and so how fast a ``/predict`` that bypassed Flask could go
(docs/performance.md#floors): ``python bench/compare.py 'flask=models:APP=bench.bare_app:create_app()'
'wsgi=models:APP=bench.bare_wsgi_app:create_app()' service=models``.
"""

from __future__ import annotations


def create_app():
    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/readyz":
            body = b'{"status": "ready"}'
        else:
            received = len(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
            body = b'{"ok": true, "bytes": %d}' % received
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app
